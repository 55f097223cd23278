"""Fixtures of the WebSocket conformance suite (t/conformance).

Run: /usr/bin/python3 -m pytest -q -p no:cacheprovider t/conformance
Env: IM_MODULE (the module .so), IM_BUILD (the build directory), as for
t/integration, whose helpers (t/integration/imtest.py) this suite uses.

The cases are the Autobahn testsuite's categories that a binary-only
server must pass, rebuilt on Debian's python3-autobahn: frames are
written by autobahn's own frame writer (WebSocketProtocol.sendFrame,
the one the testsuite's fuzzing client drives), UTF-8 verdicts come
from autobahn's Utf8Validator.  Where Autobahn expects a text echo, the
cases send a binary message carrying an im.Frame Ping and expect the
server's Pong (same id, same ts_ms): the server's echo.

    server      module scope: one redis-server and one nginx per test
                file, with the file's SERVER directives (default CONF);
                each test fails if it made error.log or stderr hold an
                [alert], [crit], [emerg] or a sanitizer report
    ab          factory: ab() -> an ABClient that has done its handshake

Every test carries a category (pytest.mark.category); the terminal
summary prints "category: N passed, N failed" per category.
"""

import collections
import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

sys.path.insert(0, HERE)

import imtest  # noqa: E402
from abtest import ABClient, CONF  # noqa: E402

_guard_key = pytest.StashKey()
_results = collections.OrderedDict()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "category(name): the conformance category of a test, "
        "counted in the per-category summary")


def pytest_report_header(config):
    return "ngx_im module: %s" % imtest.IM_MODULE


def pytest_sessionstart(session):
    if not os.path.exists(imtest.IM_MODULE):
        raise pytest.UsageError("no module at %s: run ./build.sh build or "
                                "set IM_MODULE" % imtest.IM_MODULE)


# --------------------------------------------------------------------------
# per-category counts

def _category(item):
    m = item.get_closest_marker("category")
    if m is not None:
        return m.args[0]
    return getattr(item.module, "CATEGORY", item.module.__name__)


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        item.stash[_guard_key] = _category(item)


def pytest_runtest_logreport(report):
    cat = report.__dict__.get("im_category")
    if cat is None:
        return
    counts = _results.setdefault(cat, collections.Counter())
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            counts["passed" if report.passed else "xfailed"] += 1
        elif report.passed:
            counts["passed"] += 1
        elif report.skipped:
            counts["skipped"] += 1
        else:
            counts["failed"] += 1
    elif report.failed:
        counts["failed"] += 1        # an error in setup or teardown
    elif report.skipped and report.when == "setup" \
            and not hasattr(report, "wasxfail"):
        counts["skipped"] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    cat = item.stash.get(_guard_key, None)
    if cat is not None:
        rep.__dict__["im_category"] = cat


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("conformance by category")
    for cat, c in _results.items():
        line = "%s: %d passed, %d failed" % (cat, c["passed"], c["failed"])
        extra = ["%d %s" % (c[k], k) for k in ("xfailed", "skipped") if c[k]]
        if extra:
            line += " (" + ", ".join(extra) + ")"
        tr.write_line(line)


# --------------------------------------------------------------------------
# servers

@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    return imtest.load_pb(tmp_path_factory.mktemp("proto"))


def _start(tmp_path_factory, name, directives):
    d = tmp_path_factory.mktemp(name)
    r = imtest.Redis(d / "redis").start()
    n = imtest.Nginx(d / "nginx", r.addr, directives)
    n.redis = r
    try:
        n.start()
    except Exception:
        r.stop()
        raise
    return n


def _stop(n):
    imtest.close_all_raw_clients()
    n.stop()
    n.redis.stop()


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, pb):
    """nginx + redis-server for the whole test file."""
    n = _start(tmp_path_factory, request.module.__name__.split(".")[-1],
               getattr(request.module, "SERVER", CONF))
    yield n
    _stop(n)
    bad = n.bad_log_lines()
    if bad:
        pytest.fail("error.log of nginx has forbidden lines:\n"
                    + "\n".join(bad[:50]), pytrace=False)


@pytest.fixture
def make_server(tmp_path_factory, pb):
    """Factory: make_server(directives) -> a started nginx (with its own
    redis-server) for this test only, checked and stopped after it."""
    servers = []

    def factory(directives=CONF):
        n = _start(tmp_path_factory, "srv", directives)
        servers.append(n)
        return n

    yield factory
    bad = []
    for n in servers:
        _stop(n)
        bad += n.bad_log_lines()
    if bad:
        pytest.fail("error.log of nginx has forbidden lines:\n"
                    + "\n".join(bad[:50]), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    # a report in the shared server's log fails the test that caused it
    n = item.funcargs.get("server")
    mark = n.log_mark() if n is not None else 0
    outcome = yield
    if n is None or outcome.excinfo is not None:
        return
    time.sleep(0.05)
    text = n._log_since(mark)
    bad = [line for line in text.splitlines()
           if any(p in line for p in imtest.BAD_LOG_PATTERNS)]
    if bad:
        pytest.fail("error.log of nginx has forbidden lines:\n"
                    + "\n".join(bad[:50]), pytrace=False)


@pytest.fixture
def ab(server):
    """Factory: ab(**upgrade_kw) -> an ABClient on the module's server
    that has done its handshake; closed after the test."""
    clients = []

    def factory(**kw):
        c = ABClient(server.port)
        c.upgrade(**kw)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()
