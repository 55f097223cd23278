"""The health check of ngx_http_im_module: `im_health;` in a location of
nginx's http block answers 200 {"status": "ok", "workers": [...]} only
when every running worker of the stream side has its Redis command and
subscriber links up and its routes registered, and has updated its state
within 15 s; otherwise 503 {"status": "unavailable", ...} naming the
worker that is not.  Without an `im` server: 503 with a reason.

Redis faults come from the fault proxy (faultproxy.py): a worker's links
are cut and new ones refused, found by the sockets the worker holds.
Waits are bounded; nothing asserts that something was fast."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from imtest import (body, free_port, http_block, http_get, nginx_conf,
                    wait_until)
from imchat import RawChat, poll
from imload import stop_and_check_log


LOCATIONS = {"/metrics": "im_metrics;", "/health": "im_health;"}
# a worker's links are up (again) within this: the adapter's backoff is
# capped at 5 s (+ up to 50 % jitter), a heartbeat runs every 5 s
RECOVERY = 30
STALLED = 15            # s without a state update: "stalled": true


def im_nginx(nginx, workers=1, **kw):
    """nginx with `im;` and /metrics, /health on a second loopback port
    (.http_port)."""
    hport = free_port()
    n = nginx(workers=workers, main_directives=http_block(hport, LOCATIONS),
              **kw)
    n.http_port = hport
    return n


def health(n, method="GET", timeout=5):
    """(status, headers, parsed JSON or None for an empty body) of
    /health."""
    status, hdrs, content = http_get(n.http_port, "/health", method=method,
                                     timeout=timeout)
    doc = json.loads(content.decode("utf-8")) if content else None
    return status, hdrs, doc


def media_type(hdrs):
    return hdrs.get("content-type", "").split(";")[0].strip().lower()


def by_pid(doc):
    """{pid: entry} of a health document's workers (each pid once)."""
    ws = doc.get("workers")
    assert isinstance(ws, list), doc
    out = {}
    for w in ws:
        assert isinstance(w.get("pid"), int), w
        assert w["pid"] not in out, "pid %d twice: %s" % (w["pid"], doc)
        out[w["pid"]] = w
    return out


def check_entry(w):
    """Each field of a worker entry has a value of the contract."""
    assert w.get("command") in ("up", "down"), w
    assert w.get("subscriber") in ("up", "down"), w
    assert w.get("routes") in ("current", "resyncing", "stale"), w
    assert w.get("stalled") in (True, False), w
    assert w.get("starting") in (True, False), w


def healthy(w):
    """Links up, routes set (or being set again for a moment), state
    fresh."""
    check_entry(w)
    return (w["command"] == "up" and w["subscriber"] == "up"
            and w["routes"] in ("current", "resyncing") and not w["stalled"])


def check_doc(status, hdrs, doc):
    """The answer agrees with itself: 200 and "ok" exactly when every
    worker is healthy or just starting, at least one is healthy, and no
    worker is unseen."""
    assert media_type(hdrs) == "application/json", hdrs
    assert status in (200, 503), (status, doc)
    if status == 200:
        assert doc.get("status") == "ok", doc
        ws = by_pid(doc)
        assert ws, doc
        assert all(healthy(w) or w["starting"] for w in ws.values()), doc
        assert any(healthy(w) for w in ws.values()), doc
        assert "unseen_workers" not in doc, doc
    else:
        assert doc.get("status") == "unavailable", doc


def wait_health(n, cond, timeout, what, request_timeout=5):
    """Poll /health until cond(status, doc) is true: returns (status,
    doc).  A request that fails or times out (a worker that does not
    answer) is tried again on a new connection."""
    last = [None]

    def probe():
        try:
            status, hdrs, doc = health(n, timeout=request_timeout)
        except OSError as e:
            last[0] = e
            return None
        check_doc(status, hdrs, doc)
        last[0] = (status, doc)
        return (status, doc) if cond(status, doc) else None

    got = poll(probe, timeout, 0.2)
    assert got, "timed out after %d s waiting for %s; last answer %s" % (
        timeout, what, last[0])
    return got


def all_ok(n):
    """A condition: 200 with exactly the running workers, all healthy."""
    def cond(status, doc):
        return (status == 200
                and set(by_pid(doc)) == set(n.worker_pids()))
    return cond


def socket_owner(local_port, remote_port, pids):
    """The pid among pids holding the loopback TCP socket local_port ->
    remote_port (from /proc/net/tcp and /proc/<pid>/fd), or None."""
    want = ("0100007F:%04X" % local_port, "0100007F:%04X" % remote_port)
    inode = None
    with open("/proc/net/tcp") as fp:
        for line in fp.readlines()[1:]:
            f = line.split()
            if (f[1], f[2]) == want:
                inode = f[9]
                break
    if inode is None or inode == "0":
        return None
    target = "socket:[%s]" % inode
    for pid in pids:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == target:
                    return pid
            except OSError:
                continue
    return None


# --------------------------------------------------------------------------

def test_ok_names_every_worker_and_only_get_and_head(nginx):
    """Two workers with their links up: 200, application/json,
    {"status": "ok"} and one entry per running worker, each up, up,
    current and not stalled.  HEAD: 200, the same type, no body.  POST,
    PUT and DELETE: 405."""
    n = im_nginx(nginx, workers=2)
    status, doc = wait_health(n, all_ok(n), RECOVERY, "200 with both workers")
    assert sorted(by_pid(doc)) == n.worker_pids(), doc

    status, hdrs, content = http_get(n.http_port, "/health", method="HEAD")
    assert status == 200, status
    assert media_type(hdrs) == "application/json", hdrs
    assert content == b"", content

    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = http_get(n.http_port, "/health", method=method,
                                data=b"{}" if method != "DELETE" else None)
        assert status == 405, (method, status)
    wait_health(n, all_ok(n), RECOVERY, "200 after the refused methods")


def test_cut_links_make_503_naming_the_worker(nginx, fproxy):
    """Two workers reaching Redis through the fault proxy.  One worker's
    command and subscriber links are cut and new connections refused:
    503, "unavailable", that worker's entry shows command and subscriber
    down while the other worker's entry is healthy.  Once the proxy
    allows again, 200 with both workers healthy, the same pids."""
    n = im_nginx(nginx, workers=2, redis_addr=fproxy.addr)
    wait_health(n, all_ok(n), RECOVERY, "200 with both workers")
    pids = n.worker_pids()

    def owned():
        links = fproxy.links()
        owners = {}
        for link in links:
            if link.kind is None:
                return None
            pid = socket_owner(link.peer[1], fproxy.port, pids)
            if pid is None:
                return None
            owners.setdefault(pid, []).append(link)
        kinds = {pid: sorted(l.kind for l in ls)
                 for pid, ls in owners.items()}
        return owners if kinds == {p: ["cmd", "sub"] for p in pids} \
            else None

    owners = wait_until(owned, 10, 0.1, "each worker's two links at the "
                        "proxy (have %s)" % fproxy.links())
    victim, other = pids[0], pids[1]

    fproxy.refuse()
    try:
        for link in owners[victim]:
            link.cut()

        def victim_down(status, doc):
            w = by_pid(doc).get(victim)
            return (status == 503 and w is not None
                    and w["command"] == "down" and w["subscriber"] == "down")

        status, doc = wait_health(n, victim_down, 15,
                                  "503 with worker %d down" % victim)
        ws = by_pid(doc)
        assert set(ws) == set(pids), doc
        assert healthy(ws[other]), doc
        assert not ws[victim].get("stalled", False), doc
        assert not [l for l in owners[other] if l.closed], \
            "the other worker's links were cut too"
    finally:
        fproxy.allow()

    status, doc = wait_health(n, all_ok(n), RECOVERY,
                              "200 once the proxy allows again")
    assert sorted(by_pid(doc)) == pids, doc


def test_stopped_worker_is_stalled(nginx):
    """Two workers; one is SIGSTOPped.  Past 15 s without an update of
    its state, /health (answered by the other worker) is 503 and the
    stopped worker's entry has "stalled": true, the other's is healthy.
    After SIGCONT, 200 again."""
    n = im_nginx(nginx, workers=2)
    wait_health(n, all_ok(n), RECOVERY, "200 with both workers")
    victim, other = n.worker_pids()

    os.kill(victim, signal.SIGSTOP)
    try:
        def stalled(status, doc):
            w = by_pid(doc).get(victim)
            return status == 503 and w is not None and w.get("stalled")

        status, doc = wait_health(n, stalled, STALLED + RECOVERY,
                                  "worker %d stalled" % victim,
                                  request_timeout=2)
        ws = by_pid(doc)
        assert ws[victim]["stalled"] is True, doc
        assert healthy(ws[other]), doc
    finally:
        os.kill(victim, signal.SIGCONT)

    wait_health(n, all_ok(n), RECOVERY, "200 after SIGCONT")


# --------------------------------------------------------------------------
# no im server

@pytest.mark.parametrize("stream", ["without-im", "no-stream-block"])
def test_no_im_server_is_503_with_a_reason(nginx, stream):
    """An http block with im_health, and a stream server that is not an
    `im` server (it returns a string), or no stream block at all: 503,
    application/json, {"status": "unavailable", "reason": "..."}.  GET
    and HEAD only here too."""
    hport = free_port()
    n = nginx(start=False)
    n.http_port = hport
    block = http_block(hport, LOCATIONS)
    if stream == "without-im":
        conf = nginx_conf(n.dir, n.port, redis_addr=None, im=False,
                          server_directives="return ok;",
                          main_directives=block)
    else:
        # the same main level and events, then nothing of stream
        conf = nginx_conf(n.dir, n.port, redis_addr=None,
                          main_directives=block).split("stream {")[0]
        n.port = hport          # what start() waits for
    with open(n.conf_path, "w") as fp:
        fp.write(conf)
    assert "im;" not in conf, conf
    n.start()

    status, hdrs, doc = health(n)
    assert status == 503, (status, doc)
    assert media_type(hdrs) == "application/json", hdrs
    assert doc.get("status") == "unavailable", doc
    assert isinstance(doc.get("reason"), str) and doc["reason"].strip(), doc
    assert not doc.get("workers"), doc

    status, hdrs, content = http_get(hport, "/health", method="HEAD")
    assert status == 503, status
    assert content == b"", content
    status, _, _ = http_get(hport, "/health", method="POST", data=b"{}")
    assert status == 405, status


# --------------------------------------------------------------------------
# the worker slots of the zone

def test_reload_shows_new_workers_only_healthy_ones_fail(nginx):
    """Probing /health every few ms through three reloads of 2 workers:
    every answer is 200.  The new workers are "starting" until their
    links are up, the old ones still serve meanwhile, and a resync that
    lasts a moment is "resyncing", not a fault."""
    n = im_nginx(nginx, workers=2)
    wait_health(n, all_ok(n), RECOVERY, "all workers healthy")
    seen, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            status, hdrs, doc = health(n, timeout=5)
            check_doc(status, hdrs, doc)
            seen.append((status, doc))
            time.sleep(0.005)

    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(3):
            n.reload()
            time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    bad = [x for x in seen if x[0] != 200]
    assert len(seen) > 50, len(seen)
    assert not bad, "%d of %d probes not 200, e.g. %s" % (
        len(bad), len(seen), bad[:2])


def test_more_workers_than_slots_over_a_reload(nginx):
    """65 workers, then a reload: for a moment 130 processes want one of
    the 128 slots.  Those left without one say so ("unseen_workers",
    503) and take a slot at a heartbeat once the old workers have gone:
    then /health shows exactly the running workers, all healthy."""
    n = im_nginx(nginx, workers=65)
    wait_health(n, all_ok(n), 60, "65 workers healthy")
    new = set(n.reload(timeout=60))
    wait_until(lambda: set(n.worker_pids(all=True)) == new, 30,
               what="the old workers gone")
    status, doc = wait_health(n, all_ok(n), RECOVERY,
                              "every new worker shown, all healthy")
    assert set(by_pid(doc)) == new


def spawn_with_pid(pid, tries=50):
    """A `sleep` process with the given pid (through ns_last_pid, as
    root), or None."""
    for _ in range(tries):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as fp:
                fp.write(str(pid - 1))
        except OSError:
            return None
        p = subprocess.Popen(["sleep", "60"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


def test_a_killed_workers_pid_reused_is_not_a_worker(nginx):
    """After a reload (so that a lower slot is free), alice signs in on
    the one worker, which is then SIGKILLed; nginx starts another.  Its
    slot claim clears the dead worker's slot, so when an unrelated
    process later gets the dead worker's pid, /health and /metrics do not
    count it: no entry, sessions back at 0, 200 also 16 s later (where a
    slot kept alive by the pid showed "stalled" and 503)."""
    n = im_nginx(nginx, workers=1)
    wait_health(n, all_ok(n), RECOVERY, "healthy")
    new = n.reload()
    wait_until(lambda: set(n.worker_pids(all=True)) == set(new), 30,
               what="the old worker gone")
    wait_health(n, all_ok(n), RECOVERY, "healthy after the reload")
    victim = new[0]
    c = RawChat(n.port)
    assert body(c.auth(n.token("alice"))) == "auth_ok"
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: n.worker_pids() and victim not in n.worker_pids(),
               10, what="a new worker")
    c.close()
    wait_health(n, all_ok(n), RECOVERY, "healthy after the respawn")
    p = spawn_with_pid(victim)
    if p is None:
        pytest.skip("could not get pid %d again" % victim)
    try:
        for wait in (0, STALLED + 1):
            time.sleep(wait)
            status, hdrs, doc = health(n)
            check_doc(status, hdrs, doc)
            assert status == 200 and victim not in by_pid(doc), doc
            text = http_get(n.http_port, "/metrics")[2].decode()
            assert 'ngx_im_sessions{state="authenticated"} 0' in text, text
            assert 'worker="%d"' % victim not in text, text
    finally:
        p.kill()
        p.wait()
    stop_and_check_log(n, allowed=[
        r"\[alert\] \d+#\d+: worker process %d exited on signal 9" % victim])
