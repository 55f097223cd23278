"""Limits and flood control: each limit cuts the offender off, and a
bystander on the same worker (worker_processes 1) notices nothing: its
Pings and Sends keep working during and after, and its friend gets every
message in order.

    im_rate <n>r/s [burst=<n>] [bytes=<size>] | off
    im_max_sessions_per_user N
    im_max_unauthenticated N      (per worker; HTTP 503 on the handshake)
    im_send_queue size            (slow consumer closed, "too slow")
    im_max_frame size             (close 1009)

and `nginx -t` refuses bad values."""

import asyncio
import re
import time

import pytest

from imchat import Chat, login, next_id, raw_auth, redis_cmd, routes_key
from imtest import (OP_BINARY, OP_CLOSE, OP_CONT, RawClient, body, decode,
                    encode, error_code, free_port, frame, run, wait_until,
                    ws_frame)
from imload import Bystander


def close_frame(payload):
    assert len(payload) >= 2, payload
    return (payload[0] << 8 | payload[1]), payload[2:].decode()


def read_until_close(c, timeout=10):
    """Frames from a RawClient until the server's close frame:
    ([im.Frame], (code, reason)); (None, None) if the server just hung up."""
    deadline = time.monotonic() + timeout
    frames = []
    while True:
        try:
            fin, op, payload = c.recv_frame(max(0.01,
                                                deadline - time.monotonic()))
        except EOFError:
            return frames, (None, None)
        if op == OP_CLOSE:
            return frames, close_frame(payload)
        assert op == OP_BINARY, (op, payload)
        frames.append(decode(payload))


def say_goodbye(c):
    """Answer the server's close, then the connection must end."""
    try:
        c.send_close(1000)
    except OSError:
        pass
    assert c.wait_eof(10), "the server kept the offender's connection"
    c.close()


# --------------------------------------------------------------------------
# im_rate

def ping_flood(n, count):
    """An authenticated client pipelines `count` Pings at once; what it
    gets back before the close."""
    c = raw_auth(n, "flooder")
    flood = b"".join(ws_frame(OP_BINARY, encode(frame(
        id=5000 + i, ping={"ts_ms": i}))) for i in range(count))
    try:
        c.send_raw(flood)
    except OSError:
        pass
    frames, close = read_until_close(c)
    say_goodbye(c)
    return c.pid, frames, close


def test_im_rate_ping_flood_is_limited_then_cut_off(nginx):
    n = nginx("im_rate 20r/s burst=20;", workers=1)

    async def go():
        by = await Bystander(n, pace=0.2).start()
        pid, frames, close = await asyncio.to_thread(ping_flood, n, 300)
        assert pid == by.pid
        pongs = [f for f in frames if body(f) == "pong"]
        errors = [f for f in frames if body(f) == "error"]
        assert len(pongs) + len(errors) == len(frames), frames
        # the burst is served, then the frames over the rate are refused
        assert 10 <= len(pongs) <= 40, len(pongs)
        assert errors, "no Error{RATE_LIMITED} before the close"
        assert all(e.error.code == error_code("RATE_LIMITED")
                   for e in errors), errors
        assert body(frames[0]) == "pong" and body(frames[-1]) == "error"
        # ...and the client that keeps on is cut off long before the end
        assert close == (1008, "rate limit exceeded"), close
        assert len(frames) < 150
        n.wait_log(r"\[info\] .*client exceeded im_rate, cut off")
        print("\nping flood of 300 at im_rate 20r/s burst=20: %d Pongs, "
              "%d RATE_LIMITED, then close %s" % (len(pongs), len(errors),
                                                 close))
        await by.finish(after=5)

    run(go(), timeout=60)


def test_im_rate_off_lets_a_flood_through(nginx):
    n = nginx("im_rate off;", workers=1)

    def flood():
        c = raw_auth(n, "flooder")
        c.send_raw(b"".join(ws_frame(OP_BINARY, encode(frame(
            id=7000 + i, ping={"ts_ms": i}))) for i in range(1000)))
        ids = [c.recv_pb(10).id for _ in range(1000)]
        c.ping_pong()
        c.close()
        return ids

    async def go():
        by = await Bystander(n).start()
        ids = await asyncio.to_thread(flood)
        assert ids == [7000 + i for i in range(1000)]
        await by.finish(after=3)

    run(go(), timeout=60)


def bytes_flood(n, frames_, size, pause):
    """Sends of `size` bytes each, `pause` s apart: the replies and the
    close."""
    c = raw_auth(n, "bulky")
    sent = 0
    for i in range(frames_):
        try:
            c.send_pb(frame(id=6000 + i, send={
                "to": "sink", "body": b"x" * size,
                "client_msg_id": "bulk%d" % i}))
        except OSError:
            break
        sent += 1
        time.sleep(pause)
    got, close = read_until_close(c)
    say_goodbye(c)
    return c.pid, sent, got, close


def test_im_rate_bytes_is_limited_then_cut_off(nginx, redis):
    # 8 kB/s with a 16 kB bucket; 3 kB Sends every 20 ms
    n = nginx("im_rate 1000r/s burst=1000 bytes=8k; im_max_frame 8k;",
              workers=1)

    async def go():
        by = await Bystander(n).start()
        pid, sent, got, close = await asyncio.to_thread(bytes_flood, n, 40,
                                                        3000, 0.02)
        assert pid == by.pid
        acks = [f for f in got if body(f) == "send_ack"]
        errors = [f for f in got if body(f) == "error"]
        assert len(acks) + len(errors) == len(got), got
        # the 16 kB bucket takes about 5 of them (more if the client was
        # slowed down and the bucket refilled meanwhile)
        assert 3 <= len(acks) <= 15, len(acks)
        assert len(got) < sent, "not cut off before the end"
        assert errors and all(e.error.code == error_code("RATE_LIMITED")
                              for e in errors), errors
        assert close == (1008, "rate limit exceeded"), close
        # only what was acknowledged was stored
        stored = int(redis_cmd(redis, "XLEN", "im:{u:sink}:inbox"))
        assert stored == len(acks), (stored, len(acks))
        print("\n3 kB Sends at im_rate bytes=8k: %d acked, %d RATE_LIMITED, "
              "then close %s" % (len(acks), len(errors), close))
        await by.finish(after=5)

    run(go(), timeout=60)


def test_rate_limited_request_is_answered_with_its_id(nginx, redis):
    """DESIGN.md: every request with an id (other than Ack, Typing, Ping)
    is answered with frames carrying the same id, its reply or an Error.
    A Send refused for the rate is such a request: its Error{RATE_LIMITED}
    must carry the Send's id, or the client cannot tell which Send to
    retry."""
    n = nginx("im_rate 5r/s burst=5;", workers=1)
    c = raw_auth(n, "eager")
    # Auth took one frame of the burst: 4 Sends pass, 4 are over the rate
    # (the debt stays under the burst, so no close)
    ids = [next_id() for _ in range(8)]
    c.send_raw(b"".join(ws_frame(OP_BINARY, encode(frame(id=i, send={
        "to": "sink", "body": b"e", "client_msg_id": "e%d" % i})))
        for i in ids))
    got = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(got) < len(ids):
        try:
            got.append(c.recv_pb(max(0.01, deadline - time.monotonic())))
        except AssertionError:
            break
    limited = [f for f in got if body(f) == "error"
               and f.error.code == error_code("RATE_LIMITED")]
    assert limited, "no Send was rate limited: %s" % got
    replied = {f.id for f in got}
    missing = [i for i in ids if i not in replied]
    assert not missing, (
        "Sends %s got no reply with their id; the RATE_LIMITED errors "
        "carry ids %s" % (missing, [f.id for f in limited]))
    c.close()


# --------------------------------------------------------------------------
# im_max_sessions_per_user

def test_im_max_sessions_per_user(nginx, redis):
    n = nginx("im_max_sessions_per_user 2;", workers=1)

    async def go():
        by = await Bystander(n).start()
        d1 = await login(n, "multi", device="d1")
        d2 = await login(n, "multi", device="d2")
        assert d1.pid == d2.pid == by.pid

        d3 = await Chat.connect(n.url)
        f = await d3.auth(n.token("multi"), "d3")
        assert body(f) == "error", f
        assert f.error.code == error_code("FORBIDDEN"), f
        assert f.error.reason == "too many sessions", f
        await d3.wait_closed(10)
        assert d3.close_code == 1008, d3.close_code
        assert d3.ws.close_reason == "too many sessions"
        n.wait_log(r"\[info\] .*user \"multi\" has too many sessions")

        # the two that are in are fine, and both get a message
        await d1.ping()
        await d2.ping()
        poster = await login(n, "poster")
        ack = await poster.send_ok("multi", b"to both", cmid="both")
        for d in (d1, d2):
            await d.until(lambda: [m for m in d.live_messages()
                                   if m.msg_id == ack.msg_id], 10,
                          "the message on %s" % d.session)
        assert redis_cmd(redis, "HLEN", routes_key("multi")) == 2

        # a session less, and a third device gets in
        await d2.close()
        wait_until(lambda: redis_cmd(redis, "HLEN", routes_key("multi"))
                   == 1, 10, what="d2's route removed")
        d3 = await login(n, "multi", device="d3")
        await d3.until(lambda: [m for m in d3.live_messages()
                                if m.msg_id == ack.msg_id], 10,
                       "the replay on d3")
        await d1.ping()
        await by.finish(after=3)
        for c in (d1, d3, poster):
            await c.close()

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# im_max_unauthenticated

def test_im_max_unauthenticated(nginx):
    n = nginx("im_max_unauthenticated 3; im_auth_timeout 60s;", workers=1)

    async def go():
        by = await Bystander(n).start()
        mark = n.log_mark()

        def hold_and_refuse():
            # three plain TCP connections that never say anything
            idle = [RawClient(n.port) for _ in range(3)]
            time.sleep(0.3)
            fourth = RawClient(n.port)
            status, _ = fourth.handshake()
            eof = fourth.wait_eof(5)
            fourth.close()
            return idle, status, eof

        idle, status, eof = await asyncio.to_thread(hold_and_refuse)
        assert status == 503, status
        assert eof, "the refused connection stayed open"
        n.wait_log(r"\[info\] .*too many unauthenticated connections, "
                   r"im_max_unauthenticated is 3", since=mark)
        # the authenticated bystander does not count and is fine meanwhile
        await by.more_rounds(3)

        # the idle ones go; newcomers get in again
        for c in idle:
            c.close()

        def upgraded():
            with RawClient(n.port) as c:
                status, _ = c.handshake()
                return status == 101

        await asyncio.to_thread(wait_until, upgraded, 10, 0.2,
                                "a handshake accepted again")
        late = await login(n, "late")
        await late.ping()
        await late.close()
        await by.finish(after=3)

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# im_send_queue

def test_im_send_queue_closes_a_slow_consumer(nginx, redis):
    # the slow client comes in through a listen socket with a small send
    # buffer, or the kernel would take megabytes on loopback before the
    # queue of nginx ever fills
    port2 = free_port()
    n = nginx("im_send_queue 32k; im_max_frame 16k; im_rate off; "
              "listen 127.0.0.1:%d sndbuf=32k;" % port2, workers=1)
    body_ = b"s" * 10000

    async def go():
        by = await Bystander(n).start()
        slow = await asyncio.to_thread(raw_auth, n, "slow", port=port2,
                                       rcvbuf=16384)
        assert slow.pid == by.pid
        feeder = await login(n, "feeder")
        sent = 0
        for i in range(200):        # 2 MB at most
            await feeder.send_ok("slow", body_, cmid="f%d" % i)
            sent += 1
            if n.find_log(r"too slow"):
                break
        n.wait_log(r"\[info\] .*client is too slow, im_send_queue is full",
                   timeout=10)
        # the slow one is gone, with its route
        assert await asyncio.to_thread(slow.wait_eof, 10), \
            "the slow client is still connected"
        wait_until(lambda: redis_cmd(redis, "HLEN", routes_key("slow"))
                   == 0, 10, what="the slow client's route removed")
        # nothing was lost: it is all in the inbox for its next login
        for i in range(3):
            await feeder.send_ok("slow", b"after", cmid="after%d" % i)
        assert int(redis_cmd(redis, "XLEN", "im:{u:slow}:inbox")) == sent + 3
        print("\nslow consumer closed after %d messages of 10 kB "
              "(im_send_queue 32k)" % sent)
        await feeder.ping()
        await feeder.close()
        await by.finish(after=5)

    run(go(), timeout=90)


# --------------------------------------------------------------------------
# im_max_frame

def test_im_max_frame_closes_1009(nginx, redis):
    n = nginx("im_max_frame 4k;", workers=1)

    def offend(payload_frames):
        c = raw_auth(n, "big")
        for fr in payload_frames:
            c.send_raw(fr)
        frames, close = read_until_close(c)
        say_goodbye(c)
        return c.pid, frames, close

    async def go():
        by = await Bystander(n).start()
        # just under the limit is fine
        c = await login(n, "fits")
        ack = await c.send_ok("sink", b"f" * 3900, cmid="fits")
        assert ack.msg_id

        # one frame over the limit
        pid, frames, close = await asyncio.to_thread(
            offend, [ws_frame(OP_BINARY, b"\x00" * 5000)])
        assert pid == by.pid
        assert close[0] == 1009, close
        assert not frames, frames
        # a fragmented message over the limit
        pid, frames, close = await asyncio.to_thread(offend, [
            ws_frame(OP_BINARY, b"\x00" * 3000, fin=False),
            ws_frame(OP_CONT, b"\x00" * 3000)])
        assert close[0] == 1009, close
        await c.ping()
        await c.close()
        await by.finish(after=5)

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# nginx -t

def refused(result, pattern):
    ok, out = result
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\] .*" + pattern, out), out


@pytest.mark.parametrize("directives,pattern", [
    ("im_rate 10;", r'invalid im_rate "10"'),
    ("im_rate 10r/s burst=0;", r'invalid im_rate "burst=0"'),
    ("im_rate 0r/s;", r'invalid im_rate "0r/s"'),
    ("im_rate 10r/m;", r'invalid im_rate "10r/m"'),
    ("im_rate 10r/s bytes=0;", r'invalid im_rate "bytes=0"'),
    ("im_rate 10r/s flood=1;", r'invalid im_rate "flood=1"'),
    ("im_rate off burst=5;", r'takes no parameters with "off"'),
    ("im_rate 10r/s; im_rate 20r/s;", r'"im_rate" directive is duplicate'),
    ("im_rate 10r/s bytes=16k; im_max_frame 64k;",
     r'"im_rate" bytes must be at least half of "im_max_frame"'),
    ("im_send_queue 1k; im_max_frame 64k;",
     r'"im_send_queue" must be at least twice "im_max_frame"'),
    ("im_send_queue 100k;",
     r'"im_send_queue" must be at least twice "im_max_frame"'),
    ("im_max_sessions_per_user 0;", r"value must be between 1 and"),
    ("im_max_unauthenticated 0;", r"value must be between 1 and"),
    ("im_max_frame 512;", r"value must be between 1024 and"),
])
def test_nginx_t_refuses_bad_limits(nginx_t, directives, pattern):
    refused(nginx_t(directives), pattern)


@pytest.mark.parametrize("directives", [
    "im_rate off;",
    "im_rate 10r/s;",
    "im_rate 10r/s burst=1 bytes=32k;",
    "im_rate 1000r/s bytes=8k; im_max_frame 16k; im_send_queue 32k;",
    "im_max_sessions_per_user 1; im_max_unauthenticated 1;",
    "im_send_queue 128k; im_max_frame 64k;",
    "im_drain_window 0;",
])
def test_nginx_t_accepts_good_limits(nginx_t, directives):
    ok, out = nginx_t(directives)
    assert ok, out
