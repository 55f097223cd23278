"""The Prometheus metrics of ngx_http_im_module: `im_metrics;` in a
location of nginx's http block answers GET and HEAD with the counters of
every worker of the stream side (a shared memory zone), in the text
exposition format 0.0.4.

Each test starts its own nginx (and Redis) with an http server on a
second loopback port, reads /metrics before and after what it does, and
checks the counters moved by exactly what it did where that is knowable.
Every scrape is checked as a whole: `promtool check metrics` accepts it,
prometheus_client parses it with the types of the contract, every family
has HELP and TYPE, its lines are together, label values are of the
contract's sets, histograms are cumulative.  A labelled series that is
absent counts as 0.  Waits are bounded; nothing asserts that something
was fast."""

import asyncio
import json
import math
import os
import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imchat import RawChat, first_sightings, login, next_id, poll, raw_auth
from imgroup import expect_error, join, make_group, presence_sub, \
    send_group_ok, sync_page, typings
from imtest import (OP_BINARY, OP_TEXT, RawClient, body, encode, frame,
                    free_port, http_block, http_get, load_pb, mint_token,
                    run, ws_frame)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOCATIONS = {"/metrics": "im_metrics;", "/health": "im_health;"}
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# a worker's Redis links are up within this (the adapter's backoff is
# capped at 5 s, plus jitter); also the bound of a reconnect after a cut
LINKS_UP = 30

# family -> (type, its label names)
FAMILIES = {
    "ngx_im_build_info": ("gauge", ("version",)),
    "ngx_im_sessions": ("gauge", ("state",)),
    "ngx_im_logins_total": ("counter", ("result",)),
    "ngx_im_frames_received_total": ("counter", ("type",)),
    "ngx_im_messages_stored_total": ("counter", ()),
    "ngx_im_messages_delivered_total": ("counter", ("path",)),
    "ngx_im_errors_total": ("counter", ("code",)),
    "ngx_im_closes_total": ("counter", ("code",)),
    "ngx_im_slow_consumer_cutoffs_total": ("counter", ()),
    "ngx_im_rate_limited_total": ("counter", ()),
    "ngx_im_goaways_total": ("counter", ()),
    "ngx_im_redis_reconnects_total": ("counter", ()),
    "ngx_im_redis_wait_failed_total": ("counter", ()),
    "ngx_im_redis_up": ("gauge", ("worker",)),
    "ngx_im_send_ack_seconds": ("histogram", ()),
    "ngx_im_redis_roundtrip_seconds": ("histogram", ()),
}
HISTOGRAMS = [f for f, (t, _) in FAMILIES.items() if t == "histogram"]
COUNTERS = [f for f, (t, _) in FAMILIES.items() if t == "counter"]

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
HELP_RE = re.compile(r"# HELP (%s)(?: (.*))?$" % NAME)
TYPE_RE = re.compile(r"# TYPE (%s) (counter|gauge|histogram|summary|"
                     r"untyped)$" % NAME)
SAMPLE_RE = re.compile(r"(%s)(?:\{|\s)" % NAME)


def error_names():
    """The lower-case names of im.Error.Code."""
    return {k.lower() for k in load_pb().Error.Code.keys()}


def body_names():
    """The field names of im.Frame's oneof body (auth, send, ...)."""
    return {f.name for f in
            load_pb().Frame.DESCRIPTOR.oneofs_by_name["body"].fields}


def label_values():
    """label -> the set its values come from (None: checked elsewhere)."""
    return {
        ("ngx_im_sessions", "state"): {"authenticated", "unauthenticated"},
        ("ngx_im_logins_total", "result"): {"ok"} | error_names(),
        # empty: an im.Frame without a body
        ("ngx_im_frames_received_total", "type"): body_names()
        | {"invalid", "empty"},
        ("ngx_im_messages_delivered_total", "path"): {"live", "replay",
                                                      "sync"},
        ("ngx_im_errors_total", "code"): error_names(),
    }


# --------------------------------------------------------------------------
# one scrape, checked as a whole

def _family_of(sample, types):
    if sample in types:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[:-len(suffix)]
        if sample.endswith(suffix) and types.get(base) == "histogram":
            return base
    return None


def check_lines(text):
    """The text format's own rules, line by line: HELP and TYPE at most
    once per family, TYPE before the family's samples, each family's
    lines together, every sample of a declared family.  Returns
    ({family: help}, {family: type})."""
    assert text.endswith("\n"), "the exposition does not end with a newline"
    assert "\r" not in text, "CR in the exposition"
    helps, types, closed = {}, {}, set()
    current, sampled = None, set()
    for no, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d %r" % (no, line)
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("# HELP"):
                m = HELP_RE.match(line)
                assert m, "malformed HELP, " + where
                fam = m.group(1)
                assert fam not in helps, "a second HELP, " + where
                helps[fam] = m.group(2) or ""
            elif line.startswith("# TYPE"):
                m = TYPE_RE.match(line)
                assert m, "malformed TYPE, " + where
                fam = m.group(1)
                assert fam not in types, "a second TYPE, " + where
                assert fam not in sampled, "TYPE after samples, " + where
                types[fam] = m.group(2)
            else:
                continue        # a plain comment
        else:
            m = SAMPLE_RE.match(line)
            assert m, "malformed sample, " + where
            fam = _family_of(m.group(1), types)
            assert fam is not None, "a sample without a TYPE, " + where
            sampled.add(fam)
        if fam != current:
            assert fam not in closed, \
                "the lines of %s are not together, %s" % (fam, where)
            if current is not None:
                closed.add(current)
            current = fam
    return helps, types


def promtool_check(text):
    """`promtool check metrics` on the text (stdin): its exit status is
    the verdict, what it prints goes into the failure."""
    assert os.path.exists(PROMTOOL), \
        "no promtool: install prometheus (./build.sh deps)"
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (
        "promtool check metrics exited %d:\n%s%s\n--- the exposition ---\n%s"
        % (r.returncode, r.stdout, r.stderr, text))


class Scrape:
    """One /metrics answer, parsed and checked.

    .text       the exposition
    .samples    {(sample name, ((label, value), ...)): value}
    .value(name, **labels)   a sample's value, 0 when absent
    .series(name, label)     {label value: sample value} of a family
                             with one label"""

    def __init__(self, text):
        self.text = text
        helps, types = check_lines(text)
        for fam, (typ, _) in FAMILIES.items():
            assert types.get(fam) == typ, "TYPE of %s is %r, not %s:\n%s" % (
                fam, types.get(fam), typ, text)
            assert helps.get(fam, "").strip(), "no HELP text for %s" % fam

        self.samples = {}
        self.families = {}
        for f in text_string_to_metric_families(text):
            exposed = f.name + "_total" if f.type == "counter" else f.name
            assert f.type != "unknown", "a family without TYPE: %s" % f.name
            assert exposed not in self.families, "%s twice" % exposed
            self.families[exposed] = f.type
            for s in f.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, "a second sample %s %s" % key
                self.samples[key] = s.value
                self._check_sample(exposed, s)
        for fam, (typ, _) in FAMILIES.items():
            assert self.families.get(fam) == typ, \
                "prometheus_client reads %s as %r, not %s" % (
                    fam, self.families.get(fam), typ)

        # always there: build_info, both session states, the unlabelled
        # counters and the histograms (redis_up: see links_up())
        info = self.series_labels("ngx_im_build_info")
        assert len(info) == 1, info
        (labels, v), = info.items()
        assert dict(labels).get("version"), info
        assert v == 1, info
        assert set(self.series("ngx_im_sessions", "state")) == {
            "authenticated", "unauthenticated"}, self.text
        for fam in COUNTERS:
            if not FAMILIES[fam][1]:
                assert (fam, ()) in self.samples, "no sample of %s" % fam
        for fam in HISTOGRAMS:
            self._check_histogram(fam)

    def _check_sample(self, fam, s):
        typ, labels = FAMILIES.get(fam, (None, None))
        if typ is None:
            return              # a family beyond the contract: fine
        where = "%s%s %s" % (s.name, s.labels, s.value)
        if typ == "histogram":
            if s.name == fam + "_bucket":
                assert set(s.labels) == {"le"}, where
            else:
                assert s.labels == {}, where
            assert s.value >= 0 and not math.isnan(s.value), where
            if s.name != fam + "_sum":
                assert s.value == int(s.value), where
            return
        assert set(s.labels) == set(labels), "labels of " + where
        assert s.value >= 0 and s.value == int(s.value), where
        allowed = label_values()
        for k, v in s.labels.items():
            if (fam, k) in allowed:
                assert v in allowed[(fam, k)], "label value of " + where
        if fam == "ngx_im_closes_total" and s.labels["code"] != "other":
            assert s.labels["code"].isdigit(), where
            assert 1000 <= int(s.labels["code"]) <= 4999, where
        if fam == "ngx_im_redis_up":
            assert s.labels["worker"].isdigit(), where
            assert s.value in (0, 1), where

    def _check_histogram(self, fam):
        buckets = [(dict(k[1])["le"], v) for k, v in self.samples.items()
                   if k[0] == fam + "_bucket"]
        assert buckets, "no buckets of %s" % fam
        les = [b[0] for b in buckets]
        assert "+Inf" in les, "no le=\"+Inf\" bucket of %s" % fam
        bounds = sorted((float(le), v) for le, v in buckets)
        assert len({b for b, _ in bounds}) == len(bounds), les
        counts = [v for _, v in bounds]
        assert counts == sorted(counts), \
            "the buckets of %s are not cumulative: %s" % (fam, bounds)
        count = self.samples.get((fam + "_count", ()))
        total = self.samples.get((fam + "_sum", ()))
        assert count is not None and total is not None, \
            "no _count or _sum of %s" % fam
        assert counts[-1] == count, \
            "%s: le=+Inf %s, _count %s" % (fam, counts[-1], count)
        if count == 0:
            assert total == 0, "%s: _sum %s of no observation" % (fam, total)

    def value(self, name, **labels):
        """The value of the sample `name` with exactly these labels, 0 if
        there is none."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series_labels(self, name):
        return {k[1]: v for k, v in self.samples.items() if k[0] == name}

    def series(self, name, label):
        """{value of `label`: sample value} of the samples `name`."""
        return {dict(k)[label]: v
                for k, v in self.series_labels(name).items()}

    def monotonic(self):
        """{key: value} of every sample that may never go down: counters
        and the histograms' buckets, sums and counts."""
        fams = set(COUNTERS) | set(HISTOGRAMS)
        out = {}
        for key, v in self.samples.items():
            name = key[0]
            for fam in fams:
                if name == fam or (fam in HISTOGRAMS and name in (
                        fam + "_bucket", fam + "_sum", fam + "_count")):
                    out[key] = v
        return out


def scrape(n, path="/metrics"):
    """GET /metrics of nginx n (its http_port): a checked Scrape."""
    status, hdrs, content = http_get(n.http_port, path)
    assert status == 200, "GET %s: %s %r" % (path, status, content[:300])
    assert hdrs.get("content-type") == CONTENT_TYPE, hdrs
    return Scrape(content.decode("utf-8"))


async def ascrape(n):
    return await asyncio.to_thread(scrape, n)


def health(n):
    """(status, parsed JSON) of GET /health."""
    status, _, content = http_get(n.http_port, "/health")
    return status, json.loads(content.decode("utf-8"))


def im_nginx(nginx, workers=1, stream_directives="", **kw):
    """nginx with `im;` on its stream port and /metrics and /health on a
    second loopback port (.http_port)."""
    hport = free_port()
    n = nginx(workers=workers, stream_directives=stream_directives,
              main_directives=http_block(hport, LOCATIONS), **kw)
    n.http_port = hport
    return n


def links_up(n, timeout=LINKS_UP):
    """Wait until ngx_im_redis_up has one series per running worker, each
    1; returns that scrape."""
    def up():
        s = scrape(n)
        want = {str(p): 1 for p in n.worker_pids()}
        return s if s.series("ngx_im_redis_up", "worker") == want else None
    s = poll(up, timeout, 0.2)
    if s is None:
        s = scrape(n)
        raise AssertionError(
            "ngx_im_redis_up is %s, the workers are %s (after %d s)" % (
                s.series("ngx_im_redis_up", "worker"), n.worker_pids(),
                timeout))
    return s


def sessions(s):
    """(authenticated, unauthenticated) of a scrape."""
    return (s.value("ngx_im_sessions", state="authenticated"),
            s.value("ngx_im_sessions", state="unauthenticated"))


def wait_sessions(n, want, timeout=15):
    """Poll until ngx_im_sessions is want = (authenticated,
    unauthenticated); returns that scrape."""
    last = [None]

    def there():
        last[0] = scrape(n)
        return last[0] if sessions(last[0]) == want else None
    s = poll(there, timeout, 0.1)
    assert s is not None, "ngx_im_sessions is %s, expected %s" % (
        sessions(last[0]), want)
    return s


def delta(a, b, name, **labels):
    return b.value(name, **labels) - a.value(name, **labels)


def count(s, hist):
    return s.value(hist + "_count")


# --------------------------------------------------------------------------
# the exposition itself

def test_exposition_is_valid_and_only_get_and_head(nginx):
    """Two workers, no client: /metrics is 200 with the 0.0.4 content
    type, promtool accepts it, prometheus_client parses every family of
    the contract with its type, both session states are 0, redis_up has
    one series per worker (1 once the links are up), the histograms are
    there with nothing observed by a Send.  HEAD answers the same head
    without a body; POST, PUT and DELETE get 405."""
    n = im_nginx(nginx, workers=2)
    s = links_up(n)
    promtool_check(s.text)
    assert sessions(wait_sessions(n, (0, 0))) == (0, 0)
    assert count(s, "ngx_im_send_ack_seconds") == 0
    assert s.value("ngx_im_messages_stored_total") == 0
    for fam in COUNTERS:
        for key, v in s.samples.items():
            if key[0] == fam and fam != "ngx_im_redis_reconnects_total":
                assert v == 0, "%s is %s before any client" % (key, v)

    status, hdrs, content = http_get(n.http_port, "/metrics", method="HEAD")
    assert status == 200, status
    assert hdrs.get("content-type") == CONTENT_TYPE, hdrs
    assert content == b"", content

    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = http_get(n.http_port, "/metrics", method=method,
                                data=b"x=1" if method != "DELETE" else None)
        assert status == 405, (method, status)
    # still fine after the refusals
    promtool_check(scrape(n).text)


# --------------------------------------------------------------------------
# what two users did, counted exactly

def test_counters_move_by_what_two_users_did(nginx, redis):
    """Two workers (reuseport spreads the clients); alice signs in, bob
    signs in until his session is on the other worker (the misses are
    closed, each answered with close 1000).  alice sends bob 3 messages
    and 1 to their group, reads her inbox with a Sync (4 entries), pings,
    types to bob, watches his presence and tries to join a group that
    does not exist (Error NOT_FOUND); bob acknowledges.

    Both workers counted, whichever answers /metrics: logins ok + the
    sign-ins made, frames by body exactly as sent, 4 stored and 4
    send_ack_seconds observations, Messages delivered live or replayed
    as many as the clients got with id 0, 4 in answer to the Sync, one
    errors{not_found}, close 1000 once per closed session, no other
    refusal or error; 2 authenticated sessions, then 0 once closed."""
    n = im_nginx(nginx, workers=2, listen="reuseport")
    links_up(n)
    make_group(redis, "team", "alice", "bob")

    async def go():
        before = await ascrape(n)
        signins = 1
        alice = await login(n, "alice")
        bob, misses = None, 0
        for _ in range(60):
            c = await login(n, "bob")
            signins += 1
            if c.pid != alice.pid:
                bob = c
                break
            await c.close()
            misses += 1
        assert bob is not None, "bob never landed on the other worker"

        for i in range(3):
            await alice.send_ok("bob", b"m%d" % i, cmid="m%d" % i)
        await send_group_ok(alice, "team", b"g", cmid="g1")
        await bob.until(lambda: len(first_sightings(bob, "alice")) >= 4, 10,
                        "bob's 4 messages")
        msgs, done, _ = await sync_page(alice)
        assert len(msgs) == 4 and not done.more, (msgs, done)
        await alice.ping()
        await alice.post(typing={"to": "bob"})
        await bob.until(lambda: typings(bob), 10, "alice typing")
        await presence_sub(alice, ["bob"])
        expect_error(await join(alice, "nosuchgroup"), "NOT_FOUND")
        await bob.ack(first_sightings(bob, "alice", "cursor")[-1])

        # the Ack has no reply: it is in once the counter says so
        def acked():
            s = scrape(n)
            return s if delta(before, s, "ngx_im_frames_received_total",
                              type="ack") >= 1 else None
        assert await asyncio.to_thread(poll, acked, 10), "the Ack not counted"
        after = await asyncio.to_thread(wait_sessions, n, (2, 0))
        promtool_check(after.text)

        d = lambda name, **kw: delta(before, after, name, **kw)  # noqa: E731
        assert d("ngx_im_logins_total", result="ok") == signins
        for result in (set(before.series("ngx_im_logins_total", "result"))
                       | set(after.series("ngx_im_logins_total", "result"))):
            if result != "ok":
                assert d("ngx_im_logins_total", result=result) == 0, result

        want = {"auth": signins, "send": 4, "sync": 1, "ping": 1,
                "typing": 1, "presence_sub": 1, "group_join": 1, "ack": 1}
        got = {t: d("ngx_im_frames_received_total", type=t)
               for t in body_names() | {"invalid"}}
        assert {t: v for t, v in got.items() if v} == want, got

        assert d("ngx_im_messages_stored_total") == 4
        assert count(after, "ngx_im_send_ack_seconds") \
            - count(before, "ngx_im_send_ack_seconds") == 4
        pushed = len(bob.live_messages()) + len(alice.live_messages())
        assert pushed >= 4, pushed
        assert (d("ngx_im_messages_delivered_total", path="live")
                + d("ngx_im_messages_delivered_total", path="replay")) \
            == pushed, after.series("ngx_im_messages_delivered_total", "path")
        assert d("ngx_im_messages_delivered_total", path="sync") == 4

        errors = {c: d("ngx_im_errors_total", code=c) for c in error_names()}
        assert {c: v for c, v in errors.items() if v} == {"not_found": 1}, \
            errors
        assert d("ngx_im_closes_total", code="1000") == misses
        for fam in ("ngx_im_goaways_total", "ngx_im_rate_limited_total",
                    "ngx_im_slow_consumer_cutoffs_total"):
            assert d(fam) == 0, fam
        assert count(after, "ngx_im_redis_roundtrip_seconds") \
            > count(before, "ngx_im_redis_roundtrip_seconds")

        await alice.close()
        await bob.close()
        end = await asyncio.to_thread(wait_sessions, n, (0, 0))
        assert delta(before, end, "ngx_im_closes_total", code="1000") \
            == misses + 2

    run(go(), timeout=120)


# --------------------------------------------------------------------------
# refusals and errors, by code

def test_refusals_are_counted_by_code(nginx, redis):
    """One worker, im_max_sessions_per_user 1.  A token signed with
    another key: Error UNAUTHENTICATED and close 1008, one
    logins{unauthenticated}.  A Send before Auth: Error UNAUTHENTICATED
    but no login counted.  A binary message that is not an im.Frame:
    frames{invalid} and Error BAD_FRAME.  alice's one session is in (the
    limit), her second is refused with FORBIDDEN and close 1008
    (logins{forbidden}).  Nothing is stored."""
    n = im_nginx(nginx, server_directives="im_max_sessions_per_user 1;")
    links_up(n)
    before = scrape(n)

    bad = RawChat(n.port)
    f = bad.auth(mint_token(os.urandom(32), sub="mallory"))
    assert body(f) == "error", f
    assert f.error.code == load_pb().Error.Code.Value("UNAUTHENTICATED"), f
    assert bad.recv_close()[0] == 1008
    bad.close()

    early = RawChat(n.port)
    id = next_id()
    early.send_pb(frame(id=id, send={"to": "bob", "body": b"x"}))
    early.expect_error(id, "UNAUTHENTICATED")
    early.send_frame(OP_BINARY, b"\xff\xff\xff\xff")
    early.expect_error(0, "BAD_FRAME")
    early.ping_pong()
    early.close()

    alice = raw_auth(n, "alice")
    second = RawChat(n.port)
    f = second.auth(n.token("alice"), "other")
    assert body(f) == "error", f
    assert f.error.code == load_pb().Error.Code.Value("FORBIDDEN"), f
    assert second.recv_close()[0] == 1008
    second.close()

    after = wait_sessions(n, (1, 0))
    d = lambda name, **kw: delta(before, after, name, **kw)  # noqa: E731
    logins = {r: d("ngx_im_logins_total", result=r)
              for r in {"ok"} | error_names()}
    assert {r: v for r, v in logins.items() if v} == {
        "ok": 1, "unauthenticated": 1, "forbidden": 1}, logins
    errors = {c: d("ngx_im_errors_total", code=c) for c in error_names()}
    assert {c: v for c, v in errors.items() if v} == {
        "unauthenticated": 2, "bad_frame": 1, "forbidden": 1}, errors
    frames = {t: d("ngx_im_frames_received_total", type=t)
              for t in body_names() | {"invalid"}}
    assert {t: v for t, v in frames.items() if v} == {
        "auth": 3, "send": 1, "invalid": 1, "ping": 1}, frames
    assert d("ngx_im_closes_total", code="1008") == 2
    assert d("ngx_im_messages_stored_total") == 0
    assert count(after, "ngx_im_send_ack_seconds") \
        == count(before, "ngx_im_send_ack_seconds")
    promtool_check(after.text)
    alice.close()
    wait_sessions(n, (0, 0))


def test_rate_limited_frames_are_counted(nginx):
    """im_rate 1r/s burst=10: 15 Pings in one write before Auth.  The
    burst lets 10 through and the rest are answered Error RATE_LIMITED
    (the refill, 1 frame a second, may let a few more through; owing 5
    frames is below the burst, so the session is not closed):
    rate_limited_total and errors{rate_limited} move by exactly as many
    RATE_LIMITED errors as came back."""
    n = im_nginx(nginx, server_directives="im_rate 1r/s burst=10;")
    links_up(n)
    before = scrape(n)
    c = RawChat(n.port)
    ids = [next_id() for _ in range(15)]
    c.send_raw(b"".join(ws_frame(OP_BINARY, encode(frame(
        id=i, ping={"ts_ms": i}))) for i in ids))
    got = {}
    while len(got) < len(ids):
        f = c.recv_pb(10)
        assert f.id in ids and f.id not in got, f
        got[f.id] = f
    limited = [f for f in got.values() if body(f) == "error"]
    pongs = [f for f in got.values() if body(f) == "pong"]
    assert all(f.error.code == load_pb().Error.Code.Value("RATE_LIMITED")
               for f in limited), limited
    assert len(limited) + len(pongs) == 15, got
    assert 10 <= len(pongs) < 15, got
    after = scrape(n)
    assert delta(before, after, "ngx_im_rate_limited_total") == len(limited)
    assert delta(before, after, "ngx_im_errors_total",
                 code="rate_limited") == len(limited)
    assert delta(before, after, "ngx_im_closes_total", code="1008") == 0
    c.close()


# --------------------------------------------------------------------------
# sessions

def test_sessions_gauge_follows_connections(nginx):
    """One worker, im_max_unauthenticated 3: a TCP connection still in
    the handshake and two upgraded ones that never sign in are 3
    unauthenticated sessions (the limit); a fourth is refused with 503
    and, once gone, not counted.  One signs in: 1 authenticated, 2
    unauthenticated.  Each close takes its count back, down to 0 and
    0."""
    n = im_nginx(nginx, server_directives="im_max_unauthenticated 3; "
                 "im_auth_timeout 60s;")
    links_up(n)
    wait_sessions(n, (0, 0))
    idle = RawClient(n.port)            # in the handshake: no bytes yet
    up = [RawChat(n.port) for _ in range(2)]
    wait_sessions(n, (0, 3))

    fourth = RawClient(n.port)
    status, _ = fourth.handshake()
    assert status == 503, status
    fourth.close()
    wait_sessions(n, (0, 3))

    f = up[0].auth(n.token("alice"))
    assert body(f) == "auth_ok", f
    wait_sessions(n, (1, 2))
    idle.close()
    wait_sessions(n, (1, 1))
    up[1].close()
    wait_sessions(n, (1, 0))
    up[0].close()
    wait_sessions(n, (0, 0))


# --------------------------------------------------------------------------
# close frames

def test_close_frames_are_counted_by_code(nginx):
    """A text frame is closed with 1003 and a frame with an RSV bit with
    1002: closes_total{code} moves by one each, and the sessions gauge
    goes back to 0."""
    n = im_nginx(nginx)
    links_up(n)
    before = scrape(n)
    c = RawChat(n.port)
    c.send_frame(OP_TEXT, b"hello")
    assert c.recv_close()[0] == 1003
    c.close()
    c = RawChat(n.port)
    c.send_frame(OP_BINARY, encode(frame(id=1, ping={})), rsv=4)
    assert c.recv_close()[0] == 1002
    c.close()
    after = wait_sessions(n, (0, 0))
    assert delta(before, after, "ngx_im_closes_total", code="1003") == 1
    assert delta(before, after, "ngx_im_closes_total", code="1002") == 1
    for code in after.series("ngx_im_closes_total", "code"):
        if code not in ("1002", "1003"):
            assert delta(before, after, "ngx_im_closes_total",
                         code=code) == 0, code


# --------------------------------------------------------------------------
# reload

def test_counters_survive_reload(nginx, redis):
    """Two workers, im_drain_window 1s.  alice and bob chat, bob leaves,
    alice stays through `nginx -s reload`: she gets a Goaway and close
    1001 from her old worker.  After the reload (same zone), every
    counter and histogram sample is at least what it was, goaways and
    closes{1001} moved by one, redis_up shows the new workers only (once
    the old ones are gone), and the counting goes on: alice, signed in
    again on a new worker, sends one more message, stored + 1."""
    n = im_nginx(nginx, workers=2, server_directives="im_drain_window 1s;")
    links_up(n)

    async def go():
        alice = await login(n, "alice")
        bob = await login(n, "bob")
        await alice.send_ok("bob", b"one", cmid="one")
        await alice.send_ok("bob", b"two", cmid="two")
        await bob.close()
        before = await asyncio.to_thread(wait_sessions, n, (1, 0))
        assert before.value("ngx_im_messages_stored_total") >= 2

        new = set(await asyncio.to_thread(n.reload))
        await alice.until(lambda: [f for f in alice.frames
                                   if body(f) == "goaway"], 15, "Goaway")
        await alice.wait_closed(15)
        assert alice.close_code == 1001, alice.close_code

        def only_new():
            s = scrape(n)
            up = s.series("ngx_im_redis_up", "worker")
            return s if up == {str(p): 1 for p in new} else None
        after = await asyncio.to_thread(poll, only_new, LINKS_UP, 0.2)
        assert after is not None, (
            "redis_up after the reload: %s, new workers %s" % (
                scrape(n).series("ngx_im_redis_up", "worker"), new))
        promtool_check(after.text)
        was, now = before.monotonic(), after.monotonic()
        smaller = {k: (v, now.get(k, 0.0)) for k, v in was.items()
                   if now.get(k, 0.0) < v}
        assert not smaller, "counters went down over the reload: %s" \
            % smaller
        assert delta(before, after, "ngx_im_goaways_total") == 1
        assert delta(before, after, "ngx_im_closes_total", code="1001") == 1
        assert sessions(after) == (0, 0)

        alice = await login(n, "alice")
        assert alice.pid in new
        await alice.send_ok("bob", b"three", cmid="three")
        later = await ascrape(n)
        assert delta(after, later, "ngx_im_messages_stored_total") == 1
        assert delta(after, later, "ngx_im_logins_total", result="ok") == 1
        await alice.close()

    run(go(), timeout=90)


# --------------------------------------------------------------------------
# the Redis link

def test_redis_link_cut_is_counted(nginx, redis, fproxy):
    """One worker reaching Redis through the fault proxy.  The links are
    cut and new ones refused: redis_up of the worker goes to 0, an Auth
    is refused with UNAVAILABLE (logins{unavailable}, errors{unavailable};
    the session stays open).  Once the proxy allows again, redis_up is
    back to 1 and redis_reconnects_total went up; Redis round trips were
    observed."""
    n = im_nginx(nginx, redis_addr=fproxy.addr)
    before = links_up(n)
    pid = str(n.worker_pids()[0])

    fproxy.refuse()
    try:
        assert fproxy.cut() >= 2, fproxy.links()

        def down():
            status, h = health(n)
            w = [w for w in h.get("workers", []) if str(w.get("pid")) == pid]
            return w and w[0].get("command") == "down"
        assert poll(down, 15, 0.1), "the worker's command link never down"
        assert scrape(n).series("ngx_im_redis_up", "worker") == {pid: 0}

        c = RawChat(n.port)
        f = c.auth(n.token("alice"))
        assert body(f) == "error", f
        assert f.error.code == load_pb().Error.Code.Value("UNAVAILABLE"), f
        c.ping_pong()           # the session stays open
        c.close()
    finally:
        fproxy.allow()

    def back():
        s = scrape(n)
        return s if (s.series("ngx_im_redis_up", "worker") == {pid: 1}
                     and s.value("ngx_im_redis_reconnects_total")
                     > before.value("ngx_im_redis_reconnects_total")) \
            else None
    after = poll(back, LINKS_UP, 0.2)
    assert after is not None, (
        "after the cut: redis_up %s, reconnects %s (before %s)" % (
            scrape(n).series("ngx_im_redis_up", "worker"),
            scrape(n).value("ngx_im_redis_reconnects_total"),
            before.value("ngx_im_redis_reconnects_total")))
    assert delta(before, after, "ngx_im_logins_total",
                 result="unavailable") == 1
    assert delta(before, after, "ngx_im_logins_total", result="ok") == 0
    assert delta(before, after, "ngx_im_errors_total",
                 code="unavailable") == 1
    assert count(after, "ngx_im_redis_roundtrip_seconds") \
        > count(before, "ngx_im_redis_roundtrip_seconds")
    promtool_check(after.text)

    # and the worker serves again
    async def go():
        c = await login(n, "alice", retry=10)
        await c.close()
    run(go(), timeout=30)


# --------------------------------------------------------------------------
# im_metrics_zone and the directives

def zone_conf(nginx_t, zone, locations=None, server_directives=""):
    return nginx_t(
        stream_directives=zone,
        main_directives=http_block(free_port(), locations or LOCATIONS,
                                   server_directives=server_directives))


@pytest.mark.parametrize("size", ["32k", "32768", "1m"])
def test_metrics_zone_of_at_least_32k_passes(nginx_t, size):
    ok, out = zone_conf(nginx_t, "im_metrics_zone im_test %s;" % size)
    assert ok, "nginx -t failed:\n" + out


@pytest.mark.parametrize("size", ["32767", "31k", "1", "0", "abc"])
def test_metrics_zone_below_32k_fails(nginx_t, size):
    ok, out = zone_conf(nginx_t, "im_metrics_zone im_test %s;" % size)
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\].*im_metrics_zone", out), out


def test_metrics_zone_needs_a_name_and_a_size(nginx_t):
    ok, out = zone_conf(nginx_t, "im_metrics_zone 64k;")
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\].*im_metrics_zone", out), out


def test_smallest_metrics_zone_serves_two_workers(nginx, redis):
    """im_metrics_zone of 32k, the least: two workers count in it, a
    sign-in shows, the exposition is valid."""
    n = im_nginx(nginx, workers=2,
                 stream_directives="im_metrics_zone im_small 32k;")
    before = links_up(n)

    async def go():
        c = await login(n, "alice")
        await c.ping()
        s = await ascrape(n)
        assert delta(before, s, "ngx_im_logins_total", result="ok") == 1
        assert sessions(s) == (1, 0)
        promtool_check(s.text)
        await c.close()
    run(go(), timeout=30)


@pytest.mark.parametrize("locations,server_directives,directive", [
    ({"/metrics": "im_metrics on;"}, "", "im_metrics"),
    ({"/health": "im_health on;"}, "", "im_health"),
    ({"/x": "return 204;"}, "im_metrics;", "im_metrics"),
    ({"/x": "return 204;"}, "im_health;", "im_health"),
], ids=["metrics-argument", "health-argument", "metrics-in-server",
        "health-in-server"])
def test_http_directives_take_no_argument_and_only_in_location(
        nginx_t, locations, server_directives, directive):
    ok, out = zone_conf(nginx_t, "", locations, server_directives)
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\].*%s" % directive, out), out


def test_http_directives_not_in_http_block(nginx_t):
    ok, out = nginx_t(main_directives=http_block(
        free_port(), {"/x": "return 204;"}, http_directives="im_metrics;"))
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\].*im_metrics", out), out


def test_metrics_and_health_in_locations_pass(nginx_t):
    ok, out = zone_conf(nginx_t, "")
    assert ok, "nginx -t failed:\n" + out
    assert "test is successful" in out, out

