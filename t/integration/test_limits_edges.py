"""Every limit at its maximum and one past it, where the other files test
it only well inside or well outside (or not at all):

    nginx -t     the numeric bounds of im_inbox_max, im_max_sessions_per_
                 user, im_max_unauthenticated, im_group_max_members,
                 im_presence_max, im_max_frame (16m), im_send_queue (twice
                 im_max_frame), im_rate bytes (half of im_max_frame; just
                 under 1g), the 1024-byte key file; an im_rate burst too
                 big for the frame bucket
    handshake    a request of exactly 8192 bytes, and 8193
    token        a valid token of exactly 8192 bytes, and 8193
    ids          64 characters in every id at once (user, device, to,
                 client_msg_id, group, type), 65 in each field
    control      a close frame and a pong of exactly 125 bytes
    im_send_queue  a queue filled to exactly its size, and one byte over
    im_max_unauthenticated  N handshakes done, the N+1th is 503; a
                 refused client that left frees its slot
    im_group_max_members    a join that makes the group full, the next
    im_rate      exactly the burst of frames, one more; a debt of one
                 burst less one, a whole burst; the same for bytes
    im_inbox_max exactly im_inbox_max entries, and more

Already at both edges elsewhere (not repeated): im_max_frame 1024/1025
(test_websocket), im_max_sessions_per_user (test_limits), im_presence_max
(test_presence, test_hostile), Sync limit 1000/1001 (test_history), ping
of 125 and control frames of 126 (test_websocket), sub and device of
64/65 (test_auth_tokens, t/conformance), group Send at and over
im_group_max_members (test_groups)."""

import os
import re
import struct
import time

import pytest

from imchat import (RawChat, StalledReader, close_all, cursor_key, login,
                    next_id, redis_cmd, xlen, xrange)
from imgroup import (expect_error, expect_ok, join, make_group,
                     presence_sub, send_group_ok, sync_page)
from imtest import (LOG_LEVEL, OP_BINARY, OP_CLOSE, OP_PONG, RawClient,
                    body, close_payload, decode, ed25519_public, encode,
                    error_code, frame, free_port, run, varint, ws_frame)


# --------------------------------------------------------------------------
# nginx -t at the bounds

def accepted(result):
    ok, out = result
    assert ok, "nginx -t failed:\n" + out


def refused(result, pattern):
    ok, out = result
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\] .*" + pattern, out), out


@pytest.mark.parametrize("directive,high", [
    ("im_inbox_max", 100000000),
    ("im_max_sessions_per_user", 1000000),
    ("im_max_unauthenticated", 1000000),
    ("im_group_max_members", 1000000),
    ("im_presence_max", 1000000),
])
def test_count_directives_at_their_bounds(nginx_t, directive, high):
    for v in (1, high):
        accepted(nginx_t("%s %d;" % (directive, v)))
    for v in (0, high + 1):
        refused(nginx_t("%s %d;" % (directive, v)),
                r"value must be between 1 and %d" % high)


@pytest.mark.parametrize("directives,good", [
    ("im_max_frame 16m; im_send_queue 32m; im_rate off;", True),
    ("im_max_frame 16777217; im_send_queue 64m; im_rate off;", False),
    ("im_max_frame 64k; im_send_queue 131072;", True),
    ("im_max_frame 64k; im_send_queue 131071;", False),
    ("im_max_frame 64k; im_rate 10r/s bytes=32768;", True),
    ("im_max_frame 64k; im_rate 10r/s bytes=32767;", False),
    ("im_rate 10r/s bytes=1073741823;", True),
    ("im_rate 10r/s bytes=1073741824;", False),
], ids=["max_frame-16m", "max_frame-16m+1", "send_queue-2x", "send_queue-2x-1",
        "rate-bytes-half", "rate-bytes-half-1", "rate-bytes-1g-1",
        "rate-bytes-1g"])
def test_size_directives_at_their_bounds(nginx_t, directives, good):
    result = nginx_t(directives)
    if good:
        accepted(result)
    else:
        refused(result, r"(value must be between 1024 and 16777216|"
                        r"must be at least twice|at least half of|"
                        r"invalid im_rate)")


@pytest.mark.parametrize("size,good", [(1024, True), (1025, False)])
def test_key_file_of_1024_bytes_and_1025(nginx_t, size, good):
    """im_token_key reads a file of at most 1024 bytes: the key and its
    surrounding whitespace."""
    key = ed25519_public(os.urandom(32)).hex()
    content = key + "\n" + " " * (size - len(key) - 2) + "\n"
    assert len(content) == size
    result = nginx_t("im_token_key {dir}/big.pub;",
                     files={"big.pub": content})
    if good:
        accepted(result)
    else:
        refused(result, r"is not a public key file")


@pytest.mark.parametrize("rate,good", [
    ("1000r/s burst=2147483", True),    # burst x 1000 fits the int32 bucket
    ("1000r/s burst=2147484", False),   # one more does not
    ("1000r/s burst=4294968", False),
    ("2147483r/s", True),               # the default burst is capped
    ("2147484r/s", False),
])
def test_im_rate_burst_too_big_for_the_bucket(nginx, rate, good):
    """The frame bucket counts thousandths of a frame in 32 bits: a burst
    over 2147483 overflowed it (negative from the start), so the first
    frame of every session was over the rate and cut off.  nginx -t
    refuses a rate or a burst over 2147483; at 2147483 sessions work:
    AuthOk, Pings answered."""
    n = nginx("im_rate %s;" % rate, start=False)
    ok, out = n.test()
    if not good:
        assert not ok, out
        assert "[emerg]" in out and "invalid im_rate" in out, out
        return
    assert ok, out
    n.start()
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice"))
        assert body(f) == "auth_ok", f
        for _ in range(3):
            c.ping_pong()


# --------------------------------------------------------------------------
# the 8 KiB handshake

def request_of(c, size):
    """An upgrade request of exactly `size` bytes (up to and including the
    empty line), padded with an X-Pad header."""
    base = len(c.request(extra_headers=[("X-Pad", "")]))
    req = c.request(extra_headers=[("X-Pad", "a" * (size - base))])
    assert len(req) == size
    return req


def wait_read(n, nbytes, since):
    if LOG_LEVEL != "debug":
        time.sleep(0.3)
        return
    n.wait_log(r"recv: fd:\d+ %d of \d+" % nbytes, timeout=10, since=since)


@pytest.mark.parametrize("split", [None, 4096], ids=["one-write", "two-reads"])
@pytest.mark.parametrize("size,status", [(8192, 101), (8193, 431)])
def test_handshake_of_8192_bytes_and_8193(nginx, size, status, split):
    """The request may be 8192 bytes up to and including its empty line,
    however it arrives; one more byte is 431.  A Ping right behind an
    8192-byte request is answered."""
    n = nginx("im_auth_timeout 30s;")
    with RawClient(n.port) as c:
        req = request_of(c, size)
        ping = ws_frame(OP_BINARY, encode(frame(id=9, ping={"ts_ms": 3})))
        data = req + (ping if status == 101 else b"")
        if split:
            mark = n.log_mark()
            c.send_raw(data[:split])
            wait_read(n, split, mark)
            data = data[split:]
        try:
            c.send_raw(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got, _ = c.read_response()
        assert got == status, c.response
        if status == 101:
            f = c.recv_pb()
            assert (body(f), f.id, f.pong.ts_ms) == ("pong", 9, 3), f
        else:
            assert c.wait_eof(5)
    if status == 431:
        n.wait_log(r"\[info\] .*handshake too large")


# --------------------------------------------------------------------------
# a token of 8192 bytes

def token_of(n, size, sub="alice"):
    """A valid token of exactly `size` bytes: a footer (and if need be a
    claim) pads it."""
    def b64len(k):
        return (4 * k + 2) // 3

    for pad in range(4):
        claims = {"pad": "p" * pad} if pad else {}
        t = n.token(sub, footer=b"fff", **claims)
        base = len(t) - 1 - b64len(3)
        for k in range(max(1, (3 * (size - base - 1)) // 4 - 2),
                       (3 * (size - base - 1)) // 4 + 3):
            if base + 1 + b64len(k) == size:
                t = n.token(sub, footer=b"f" * k, **claims)
                assert len(t) == size, (len(t), size)
                return t
    raise ValueError(size)


def test_token_of_8192_bytes_and_8193(nginx):
    n = nginx("im_auth_timeout 30s;")
    with RawChat(n.port) as c:
        f = c.auth(token_of(n, 8192))
        assert body(f) == "auth_ok" and f.auth_ok.user == "alice", f
        c.ping_pong()
    with RawChat(n.port) as c:
        id = next_id()
        f = c.auth(token_of(n, 8193), id=id)
        assert body(f) == "error" and f.id == id, f
        assert f.error.code == error_code("UNAUTHENTICATED"), f
        assert f.error.reason == "token too long", f
        code, reason = c.recv_close()
        assert (code, reason) == (1008, "authentication failed")


# --------------------------------------------------------------------------
# ids of 64 characters, and 65

S64, R64, D64 = "s" * 64, "r" * 63 + "R", "d" * 64
C64, T64, G64, O64 = "c" * 64, "t" * 64, "g" * 64, "o" * 64


def test_64_characters_in_every_id_at_once(nginx, redis):
    """User, device, recipient, client_msg_id, group and type all at their
    longest: stored, delivered, deduplicated, acknowledged, synced,
    watched, typed to, joined and left."""
    n = nginx(workers=1)
    make_group(redis, G64, S64, R64)
    make_group(redis, O64, S64, open=True)

    async def go():
        s = await login(n, S64, device=D64)
        r = await login(n, R64, device=D64)
        ack = await s.send_ok(R64, b"hi", cmid=C64, type=T64)
        again = await s.send_ok(R64, b"hi again", cmid=C64, type=T64)
        assert again.msg_id == ack.msg_id
        gack = await send_group_ok(s, G64, b"all", cmid="x" + C64[1:],
                                   type=T64)
        await r.until(lambda: len(r.live_messages()) >= 2, 10,
                      "both messages")
        m, g = r.live_messages()
        assert (m.msg_id, getattr(m, "from"), m.to, m.client_msg_id,
                m.type, m.body) == (ack.msg_id, S64, R64, C64, T64, b"hi")
        assert (g.msg_id, g.group, g.type) == (gack.msg_id, G64, T64)
        assert [i for i, _ in xrange(redis, R64)] == [ack.msg_id,
                                                      gack.msg_id]

        await r.ack(g.cursor)
        for _ in range(100):
            if redis_cmd(redis, "HGET", cursor_key(R64), D64) \
                    == g.cursor.encode():
                break
            await r.ping()
        assert redis_cmd(redis, "HGET", cursor_key(R64), D64) \
            == g.cursor.encode()
        msgs, done, _ = await sync_page(r)
        assert [x.msg_id for x in msgs] == [ack.msg_id, gack.msg_id]

        _, st = await presence_sub(s, [R64])
        assert st[R64].online is True
        await s.post(typing={"to": R64})
        await r.until(lambda: [f for f in r.frames if body(f) == "typing"],
                      10, "the Typing")
        expect_ok(await join(s, O64))
        expect_ok(await s.request(group_leave={"group": O64}))
        assert not s.errors() and not r.errors(), (s.errors(), r.errors())
        await close_all([s, r])

    run(go())


ID65 = "x" * 65


@pytest.mark.parametrize("req,code", [
    ({"send": {"to": ID65, "body": b"x"}}, "BAD_FRAME"),
    ({"send": {"group": ID65, "body": b"x"}}, "BAD_FRAME"),
    ({"send": {"to": "bob", "body": b"x", "client_msg_id": ID65}},
     "BAD_FRAME"),
    ({"send": {"to": "bob", "body": b"x", "type": "t" * 65}}, "TOO_LARGE"),
    ({"group_join": {"group": ID65}}, "BAD_FRAME"),
    ({"group_leave": {"group": ID65}}, "BAD_FRAME"),
    ({"presence_sub": {"users": ["bob", ID65]}}, "BAD_FRAME"),
    ({"typing": {"to": ID65}}, "BAD_FRAME"),
    ({"typing": {"group": ID65}}, "BAD_FRAME"),
], ids=["send-to", "send-group", "client_msg_id", "type", "group_join",
        "group_leave", "presence_sub", "typing-to", "typing-group"])
def test_65_characters_are_refused(nginx, redis, req, code):
    """One character past every id's 64 (and past type's 64 bytes): the
    request's Error with its id, nothing stored, the session goes on."""
    n = nginx()

    async def go():
        c = await login(n, "alice")
        f = await c.request(**req)
        expect_error(f, code)
        assert redis_cmd(redis, "KEYS", "*xxxxxxxxxxxxxxxx*") == []
        assert redis_cmd(redis, "EXISTS", "im:{u:bob}:inbox") == 0
        await c.ping()
        await c.close()

    run(go())


# --------------------------------------------------------------------------
# control frames of 125 bytes

def test_close_and_pong_of_125_bytes(nginx):
    """125 is the largest control payload: a pong of 125 bytes is
    ignored, a close of 125 (code and a 123-byte reason) is answered
    with its code and the connection ends."""
    n = nginx("im_auth_timeout 30s;")
    with RawClient(n.port) as c:
        c.upgrade()
        c.send_frame(OP_PONG, b"p" * 125)
        c.send_pb(frame(id=4, ping={"ts_ms": 8}))
        f = c.recv_pb()
        assert (body(f), f.id) == ("pong", 4), f
        c.send_frame(OP_CLOSE, close_payload(1000, b"r" * 123))
        fin, op, payload = c.recv_frame()
        assert (op, payload[:2]) == (OP_CLOSE, struct.pack("!H", 1000))
        assert c.wait_eof(10)


# --------------------------------------------------------------------------
# im_send_queue: exactly full, one byte over

def read_pongs(c, nbytes, timeout=20):
    """Read nbytes of 2..127-byte WebSocket pongs off a RawClient."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < nbytes:
        fin, op, payload = c.recv_frame(max(0.01,
                                            deadline - time.monotonic()))
        assert (fin, op) == (True, OP_PONG), (op, payload)
        got += 2 + len(payload)
    assert got == nbytes, (got, nbytes)


def test_im_send_queue_exactly_full_and_one_byte_over(nginx):
    """A frame that makes the queue exactly im_send_queue is queued; a
    queue one byte over it drops the connection ("too slow")."""
    port2 = free_port()
    sq = 2048
    n = nginx("im_send_queue 2k; im_max_frame 1k; im_rate off; "
              "im_auth_timeout 60s; listen 127.0.0.1:%d sndbuf=4k;" % port2,
              workers=1)
    full = StalledReader(n, port2, "full")
    full.fill_queue_to(sq)
    over = StalledReader(n, port2, "over")
    over.fill_queue_to(sq - 1)
    over.ping(0)                    # 2 bytes: sq + 1
    assert over.c.wait_eof(10), "a queue over im_send_queue was kept"
    n.wait_log(r"\[info\] .*client is too slow, im_send_queue is full")
    # the full one was kept, with every pong
    assert full.queued() == sq
    read_pongs(full.c, full.made)
    full.c.ping_pong()
    assert len(n.error_log.split("client is too slow")) == 2, \
        "the full queue was dropped too"
    full.c.close()


# --------------------------------------------------------------------------
# im_max_unauthenticated

def refused_503(n):
    with RawClient(n.port) as c:
        status, _ = c.handshake()
        assert status == 503, c.response
        assert c.wait_eof(5)


def test_im_max_unauthenticated_at_and_one_over(nginx):
    """With im_max_unauthenticated 3, three connections complete their
    handshake and wait without Auth; one signs in, so a new one gets in
    (three again), and the next one is 503."""
    n = nginx("im_max_unauthenticated 3; im_auth_timeout 60s;", workers=1)
    held = []
    for _ in range(3):
        c = RawChat(n.port)         # 101, checked by upgrade()
        c.ping_pong()
        held.append(c)
    f = held[0].auth(n.token("alice"))
    assert body(f) == "auth_ok", f
    late = RawChat(n.port)
    late.ping_pong()
    refused_503(n)
    n.wait_log(r"\[info\] .*too many unauthenticated connections, "
               r"im_max_unauthenticated is 3")
    for c in held + [late]:
        c.close()


def test_a_refused_connection_frees_its_slot_when_its_client_leaves(nginx):
    """A connection refused with 503 counts as unauthenticated until the
    server has closed it.  It never read from it again, so it only closed
    it at the end of its 2 s linger, even when the client had long gone:
    a client that keeps being refused keeps the worker full (every retry
    holds a slot for 2 s).  Fixed: once the refused client has closed
    its end (and the worker has served another client since), a slot
    freed by a sign-in goes to the next newcomer."""
    n = nginx("im_max_unauthenticated 3; im_auth_timeout 60s;", workers=1)
    held = [RawChat(n.port) for _ in range(3)]
    refused_503(n)          # ... and that client closed its socket
    held[1].ping_pong()     # the worker has had its turn since
    f = held[0].auth(n.token("alice"))
    assert body(f) == "auth_ok", f
    late = RawChat(n.port)  # 101, or AssertionError on a 503
    late.ping_pong()
    for c in held + [late]:
        c.close()


# --------------------------------------------------------------------------
# im_group_max_members: the join that fills the group

def test_join_that_fills_the_group_and_the_next(nginx, redis):
    n = nginx("im_group_max_members 3;")
    make_group(redis, "club", "x1", "x2", open=True)

    async def go():
        alice = await login(n, "alice")
        bob = await login(n, "bob")
        expect_ok(await join(alice, "club"))        # 3 = the maximum
        expect_ok(await join(alice, "club"))        # already in: fine
        f = await join(bob, "club")
        assert expect_error(f, "TOO_LARGE").reason == "the group is full"
        assert int(redis_cmd(redis, "SCARD", "im:{g:club}:members")) == 3
        await send_group_ok(alice, "club", b"three of us", cmid="c1")
        await close_all([alice, bob])

    run(go())


# --------------------------------------------------------------------------
# im_rate: frames and bytes at the edges

def fresh(n):
    """An upgraded connection that has sent nothing yet: both buckets
    full (the handshake is not counted; Ping works before Auth)."""
    c = RawClient(n.port)
    c.upgrade()
    return c


def pings_of(count, first=100):
    return b"".join(ws_frame(OP_BINARY, encode(frame(
        id=first + i, ping={"ts_ms": i}))) for i in range(count))


def replies(c, count, timeout=10):
    """count im.Frames, or fewer and (code, reason) of a close."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        fin, op, payload = c.recv_frame(max(0.01,
                                            deadline - time.monotonic()))
        if op == OP_CLOSE:
            return out, (struct.unpack("!H", payload[:2])[0],
                         payload[2:].decode())
        assert op == OP_BINARY, (op, payload)
        out.append(decode(payload))
    return out, None


@pytest.mark.parametrize("count", [5, 6, 9, 10])
def test_im_rate_frames_at_the_burst_and_one_over(nginx, count):
    """burst=5: five frames at once are served; a sixth is refused with
    its id; the client may owe up to one frame less than a whole burst
    (9 at once: 4 refused, the session goes on); owing a whole burst (10
    at once) closes 1008 "rate limit exceeded"."""
    n = nginx("im_rate 10r/s burst=5; im_auth_timeout 30s;")
    c = fresh(n)
    c.send_raw(pings_of(count))
    got, close = replies(c, min(count, 9))
    assert [f.id for f in got] == list(range(100, 100 + len(got)))
    assert [body(f) for f in got] == (["pong"] * 5
                                      + ["error"] * (len(got) - 5)), got
    assert all(f.error.code == error_code("RATE_LIMITED")
               for f in got[5:]), got
    if count < 10:
        assert close is None
        assert len(got) == count
        # and nothing more: one more Ping, after the bucket refilled
        time.sleep(1.0)
        c.send_pb(frame(id=7, ping={"ts_ms": 1}))
        f = c.recv_pb()
        assert (body(f), f.id) == ("pong", 7), f
    else:
        if close is None:
            got2, close = replies(c, 1)
            assert got2 == [], got2
        assert close == (1008, "rate limit exceeded"), close
    c.close()


def padded_ping(id, wire_size):
    """One binary frame of exactly wire_size bytes (126..65535) holding
    Ping{ts_ms} padded with an unknown field."""
    payload_size = wire_size - 8            # 16-bit length + mask key
    base = encode(frame(id=id, ping={"ts_ms": 1}))
    for n in range(payload_size, 0, -1):
        pad = b"\xc2\x3e" + varint(n) + b"z" * n    # field 1000, bytes
        if len(base) + len(pad) == payload_size:
            f = ws_frame(OP_BINARY, base + pad)
            assert len(f) == wire_size and decode(base + pad).id == id
            return f
    raise ValueError(wire_size)


@pytest.mark.parametrize("sizes,answers,closed", [
    ((1024,), ["pong"], False),              # exactly the bucket
    ((1025,), ["error"], False),             # one byte over
    ((1024, 1023), [None, "error"], False),  # owes one byte less than 2x
    ((1024, 1024), None, True),              # owes a whole burst
], ids=["2x-bytes", "2x-bytes+1", "4x-bytes-1", "4x-bytes"])
def test_im_rate_bytes_at_the_burst_and_one_over(nginx, sizes, answers,
                                                 closed):
    """bytes=512: the bucket holds 1024 bytes.  One frame of exactly 1024
    bytes is served, one of 1025 is refused with RATE_LIMITED; owing
    1023 bytes (2047 at once) refuses but keeps the session, owing 1024
    (2048 at once) closes 1008."""
    n = nginx("im_rate 1000r/s burst=1000 bytes=512; im_max_frame 1024; "
              "im_auth_timeout 30s;")
    c = fresh(n)
    c.send_raw(b"".join(padded_ping(200 + i, s)
                        for i, s in enumerate(sizes)))
    if closed:
        got, close = replies(c, len(sizes) + 1)
        assert close == (1008, "rate limit exceeded"), (got, close)
        assert all(body(f) == "error" or body(f) == "pong" for f in got)
        c.close()
        return
    got, close = replies(c, len(sizes))
    assert close is None, close
    assert [f.id for f in got] == [200 + i for i in range(len(sizes))]
    for f, want in zip(got, answers):
        if want == "error":
            assert f.error.code == error_code("RATE_LIMITED"), f
        elif want == "pong":
            assert body(f) == "pong", f
    # the session goes on once the bucket has refilled (512 bytes/s)
    time.sleep(2.5)
    c.send_pb(frame(id=7, ping={"ts_ms": 1}))
    f = c.recv_pb()
    assert (body(f), f.id) == ("pong", 7), f
    c.close()


# --------------------------------------------------------------------------
# im_inbox_max: at the limit nothing goes

def test_inbox_of_exactly_im_inbox_max_and_more(nginx, redis):
    """MAXLEN ~ im_inbox_max: an inbox of exactly im_inbox_max entries
    has lost nothing; past it the newest im_inbox_max are always kept
    (Redis trims whole nodes: stream-node-max-entries 10 here, so never
    10 or more beyond the limit)."""
    redis_cmd(redis, "CONFIG", "SET", "stream-node-max-entries", "10")
    n = nginx("im_inbox_max 50; im_rate off;")

    async def go():
        alice = await login(n, "alice")
        acks = []
        for i in range(50):
            acks.append((await alice.send_ok("bob", b"%d" % i,
                                             cmid="m%d" % i)).msg_id)
        assert [i for i, _ in xrange(redis, "bob")] == acks
        for i in range(50, 75):
            acks.append((await alice.send_ok("bob", b"%d" % i,
                                             cmid="m%d" % i)).msg_id)
            kept = [k for k, _ in xrange(redis, "bob")]
            assert 50 <= len(kept) < 60, (i, len(kept))
            assert kept == acks[-len(kept):], i
        assert xlen(redis, "bob") == len(kept)
        await alice.close()

    run(go(), timeout=60)
