"""WebSocket framing (RFC 6455 section 5), closing, heartbeats and the
im.Frame layer right above it, as ngx_im does them."""

import asyncio
import fcntl
import re
import socket
import struct
import termios
import threading
import time

import pytest

from imtest import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                    RawClient, body, close_payload, decode, encode, error_code,
                    frame, recv_frame, rss_kib, run, send_frame, ws_connect,
                    ws_frame)


LONG = "im_auth_timeout 60s;"


def client(n, **kw):
    """A RawClient on n that has done its handshake."""
    c = RawClient(n.port)
    c.upgrade(**kw)
    return c


def ping_pong(c, id=1, ts=12345):
    """An im Ping on a RawClient gets the Pong with the same id and ts."""
    c.send_pb(frame(id=id, ping={"ts_ms": ts}))
    f = c.recv_pb()
    assert body(f) == "pong" and f.id == id and f.pong.ts_ms == ts, f


def closed_with(n, c, code, log, reply=True, timeout=10):
    """The server closes c with `code` (then drops the TCP connection once
    the closing handshake is done), and error.log says why at info."""
    got, reason = c.recv_close(timeout=timeout)
    assert got == code, "close %s %r, expected %s" % (got, reason, code)
    if reply:
        try:
            c.send_close(code)
        except OSError:
            pass
    assert c.wait_eof(10), "the server kept the connection after its close"
    n.wait_log(r"\[info\] .*" + log)
    return reason


def framing_error(n, c, code, reason):
    """closed_with() for a frame the parser rejects with `reason`."""
    closed_with(n, c, code, r"client sent invalid WebSocket frame: "
                + re.escape(reason))


def sized_send(size, id=5):
    """An im.Frame with a Send body, exactly `size` bytes serialized."""
    for extra in range(size, -1, -1):
        data = encode(frame(id=id, send={"to": "bob", "body": b"x" * extra}))
        if len(data) == size:
            return data
    raise ValueError(size)


def expect_error(c, id, code):
    f = c.recv_pb()
    assert body(f) == "error", f
    assert (f.id, f.error.code) == (id, error_code(code)), f
    return f


# --------------------------------------------------------------------------
# pings and pongs

def test_im_ping_pong(nginx):
    n = nginx(LONG)
    with client(n) as c:
        ping_pong(c, id=1, ts=1700000000123)
        ping_pong(c, id=0xFFFFFFFF, ts=2 ** 64 - 1)
        ping_pong(c, id=0, ts=0)


def test_im_ping_pong_websockets_library(nginx):
    n = nginx(LONG)

    async def go():
        async with ws_connect(n.url, subprotocols=["im.v1"]) as ws:
            for i in range(1, 20):
                await send_frame(ws, frame(id=i, ping={"ts_ms": i * 1000}))
            for i in range(1, 20):
                f = await recv_frame(ws)
                assert (body(f), f.id, f.pong.ts_ms) == ("pong", i, i * 1000)
            pong = await ws.ping(b"lib")
            await asyncio.wait_for(pong, 5)

    run(go())


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
def test_ws_ping_gets_pong_with_same_payload(nginx, payload):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_PING, payload)
        assert c.recv_frame() == (True, OP_PONG, payload)
        ping_pong(c)


def test_unsolicited_pongs_are_ignored(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_PONG, b"unsolicited")
        c.send_frame(OP_PONG)
        c.send_pb(frame(id=4, pong={"ts_ms": 1}))   # im Pong: no answer
        ping_pong(c, id=5)


# --------------------------------------------------------------------------
# frames the parser rejects

def test_unmasked_frame_is_1002(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_BINARY, encode(frame(id=1, ping={})), mask=False)
        framing_error(n, c, 1002, "unmasked client frame")


@pytest.mark.parametrize("rsv", [4, 2, 1, 7], ids=["rsv1", "rsv2", "rsv3",
                                                   "all"])
def test_rsv_bits_are_1002(nginx, rsv):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_BINARY, encode(frame(id=1, ping={})), rsv=rsv)
        framing_error(n, c, 1002, "reserved bits set")


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcode_is_1002(nginx, opcode):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(opcode, b"abc")
        framing_error(n, c, 1002, "reserved opcode")


@pytest.mark.parametrize("fin", [True, False])
def test_text_frame_is_1003(nginx, fin):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_TEXT, "hello".encode(), fin=fin)
        framing_error(n, c, 1003, "text frames are not supported")


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frame_over_125_is_1002(nginx, opcode):
    n = nginx(LONG)
    with client(n) as c:
        payload = b"x" * 126
        if opcode == OP_CLOSE:
            payload = close_payload(1000, b"r" * 124)
        c.send_frame(opcode, payload)
        framing_error(n, c, 1002, "control frame over 125 bytes")


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frame_is_1002(nginx, opcode):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(opcode, b"", fin=False)
        framing_error(n, c, 1002, "fragmented control frame")


@pytest.mark.parametrize("fin", [True, False])
def test_orphan_continuation_is_1002(nginx, fin):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_CONT, b"abc", fin=fin)
        framing_error(n, c, 1002, "continuation without a message")


def test_orphan_continuation_after_a_whole_message_is_1002(nginx):
    n = nginx(LONG)
    with client(n) as c:
        ping_pong(c)
        c.send_frame(OP_CONT, b"abc")
        framing_error(n, c, 1002, "continuation without a message")


def test_new_message_inside_fragmented_one_is_1002(nginx):
    n = nginx(LONG)
    with client(n) as c:
        data = encode(frame(id=1, ping={"ts_ms": 1}))
        c.send_frame(OP_BINARY, data[:2], fin=False)
        c.send_frame(OP_BINARY, data[2:])
        framing_error(n, c, 1002, "new message inside a fragmented one")


def test_fragmented_message_with_interleaved_ping(nginx):
    n = nginx(LONG)
    with client(n) as c:
        data = encode(frame(id=77, ping={"ts_ms": 1234567890123}))
        assert len(data) >= 6
        c.send_frame(OP_BINARY, data[:2], fin=False)
        c.send_frame(OP_CONT, data[2:4], fin=False)
        c.send_frame(OP_PING, b"between")
        c.send_frame(OP_CONT, data[4:], fin=True)
        assert c.recv_frame() == (True, OP_PONG, b"between")
        f = c.recv_pb()
        assert (body(f), f.id, f.pong.ts_ms) == ("pong", 77, 1234567890123)
        ping_pong(c)


def test_fragmented_message_with_empty_fragments(nginx):
    n = nginx(LONG)
    with client(n) as c:
        data = encode(frame(id=78, ping={"ts_ms": 5}))
        c.send_frame(OP_BINARY, b"", fin=False)
        c.send_frame(OP_CONT, data[:3], fin=False)
        c.send_frame(OP_CONT, b"", fin=False)
        c.send_frame(OP_CONT, data[3:], fin=False)
        c.send_frame(OP_CONT, b"", fin=True)
        f = c.recv_pb()
        assert (body(f), f.id, f.pong.ts_ms) == ("pong", 78, 5)


def test_close_inside_fragmented_message(nginx):
    n = nginx(LONG)
    with client(n) as c:
        data = encode(frame(id=79, ping={"ts_ms": 5}))
        c.send_frame(OP_BINARY, data[:3], fin=False)
        c.send_close(1000)
        fin, op, payload = c.recv_frame()
        assert (op, payload[:2]) == (OP_CLOSE, b"\x03\xe8"), (op, payload)
        assert c.wait_eof(10)


def test_many_fragments(nginx):
    n = nginx(LONG)
    with client(n) as c:
        data = sized_send(3000, id=9)
        c.send_frame(OP_BINARY, data[:1], fin=False)
        for i in range(1, len(data) - 1):
            c.send_frame(OP_CONT, data[i:i + 1], fin=False)
        c.send_frame(OP_CONT, data[-1:])
        expect_error(c, 9, "UNAUTHENTICATED")
        ping_pong(c)


def test_16_and_64_bit_lengths(nginx):
    n = nginx(LONG + " im_max_frame 128k;")
    with client(n) as c:
        for size, id in ((200, 11), (70000, 12)):
            c.send_frame(OP_BINARY, sized_send(size, id=id))
            expect_error(c, id, "UNAUTHENTICATED")
        c.send_frame(OP_PING, b"p" * 125)
        assert c.recv_frame() == (True, OP_PONG, b"p" * 125)


# --------------------------------------------------------------------------
# sizes

MAX_1K = LONG + " im_max_frame 1k;"


def test_message_at_im_max_frame_is_accepted(nginx):
    n = nginx(MAX_1K)
    with client(n) as c:
        c.send_frame(OP_BINARY, sized_send(1024, id=5))
        expect_error(c, 5, "UNAUTHENTICATED")
        data = sized_send(1024, id=6)
        c.send_frame(OP_BINARY, data[:500], fin=False)
        c.send_frame(OP_CONT, data[500:1000], fin=False)
        c.send_frame(OP_CONT, data[1000:])
        expect_error(c, 6, "UNAUTHENTICATED")


def test_message_over_im_max_frame_is_1009(nginx):
    n = nginx(MAX_1K)
    with client(n) as c:
        c.send_frame(OP_BINARY, sized_send(1025))
        framing_error(n, c, 1009, "message over im_max_frame")


def test_fragments_over_im_max_frame_are_1009(nginx):
    n = nginx(MAX_1K)
    with client(n) as c:
        data = sized_send(1200)
        c.send_frame(OP_BINARY, data[:400], fin=False)
        c.send_frame(OP_CONT, data[400:800], fin=False)
        c.send_frame(OP_CONT, data[800:])
        framing_error(n, c, 1009, "message over im_max_frame")


def test_oversized_message_with_its_payload_still_gets_1009(nginx):
    # A client sends a 256 KiB message to a server with im_max_frame 1k:
    # the header is refused, and the client must still learn why (close
    # 1009, RFC 6455 7.1.7 and 7.4.1) even though the rest of the message
    # keeps arriving behind the header.
    n = nginx(MAX_1K)
    with client(n) as c:
        data = ws_frame(OP_BINARY, b"\x00" * (256 * 1024),
                        mask_key=b"\xff\xff\xff\xff")

        def send():
            try:
                c.sock.sendall(data)
            except OSError:
                pass

        t = threading.Thread(target=send, daemon=True)
        t.start()
        try:
            code, reason = c.recv_close(timeout=10)
        except EOFError:
            code, reason = "EOF before any close frame", ""
        t.join(10)
        assert code == 1009, "got %s %r" % (code, reason)
    n.wait_log(r"\[info\] .*message over im_max_frame")


def test_announced_2_62_bytes_is_1009_without_memory_growth(nginx):
    n = nginx(LONG)
    (worker,) = n.worker_pids()
    with client(n) as c:
        ping_pong(c)
    before = rss_kib(worker)
    for _ in range(3):
        with client(n) as c:
            c.send_frame(OP_BINARY, b"\x00" * 4096, length=2 ** 62)
            framing_error(n, c, 1009, "message over im_max_frame")
    after = rss_kib(worker)
    assert n.worker_pids() == [worker], "the worker died"
    assert after - before < 4096, "worker RSS grew %d KiB" % (after - before)
    with client(n) as c:
        ping_pong(c)


def test_length_with_top_bit_is_1002(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_BINARY, b"", length=2 ** 63 + 5, length_form=64)
        framing_error(n, c, 1002, "length with the top bit set")


@pytest.mark.parametrize("form,length", [(16, 5), (16, 125), (64, 200),
                                         (64, 0xFFFF), (64, 0)])
def test_non_minimal_length_is_1002(nginx, form, length):
    n = nginx(LONG)
    with client(n) as c:
        # the header alone: the payload does not matter
        c.send_frame(OP_BINARY, b"", length=length, length_form=form)
        framing_error(n, c, 1002, "length not minimally encoded")


def test_ping_flood_without_reading_keeps_memory_bounded(nginx):
    # A client that sends pings but never reads the pongs: what the
    # server queues for it must stay bounded (DESIGN.md "Bad input":
    # memory stays bounded); the server may stop reading or close.
    n = nginx(LONG)
    (worker,) = n.worker_pids()
    before = rss_kib(worker)
    c = RawClient(n.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.upgrade()
    chunk = ws_frame(OP_PING, b"p" * 125, mask_key=b"\0\0\0\0") * 2000
    total, deadline = 0, time.monotonic() + 10
    c.sock.settimeout(1)
    try:
        while total < 64 * 1024 * 1024 and time.monotonic() < deadline:
            c.sock.sendall(chunk)
            total += len(chunk)
    except socket.timeout:
        pass                # the server stopped reading: fine
    except OSError:
        pass                # the server closed the connection: fine

    # until the server has read all it will read, note the worker's peak
    peak = rss_kib(worker)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(worker))
        try:
            unsent = struct.unpack("i", fcntl.ioctl(c.sock, termios.TIOCOUTQ,
                                                    b"\0" * 4))[0]
        except OSError:
            break
        if unsent == 0:
            break
        time.sleep(0.05)
    peak = max(peak, rss_kib(worker))
    grown = peak - before
    c.close()
    assert grown < 32 * 1024, (
        "worker RSS grew %d MiB while a client sent %d MiB of pings and "
        "read nothing" % (grown // 1024, total // (1024 * 1024)))


# --------------------------------------------------------------------------
# closing

@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1008, 1011, 3000,
                                  4999])
def test_close_is_echoed_and_tcp_closed(nginx, code):
    n = nginx(LONG)
    with client(n) as c:
        ping_pong(c)
        c.send_close(code, b"bye")
        got, reason = c.recv_close()
        assert got == code
        assert c.wait_eof(10), "the server did not close TCP after close"


def test_empty_close_is_answered(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_close()
        got, _ = c.recv_close()
        assert got in (None, 1000)
        assert c.wait_eof(10)


def test_close_with_utf8_reason(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_close(1000, "fin \u00e9t\u00e9 \u2713 \U0001F600".encode())
        assert c.recv_close()[0] == 1000
        assert c.wait_eof(10)


def test_close_with_websockets_library(nginx):
    n = nginx(LONG)

    async def go():
        ws = await ws_connect(n.url)
        await ws.close(1000, "done")
        assert ws.close_code == 1000
        await asyncio.wait_for(ws.wait_closed(), 5)

    run(go())


def test_frames_after_close_are_ignored(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_raw(ws_frame(OP_CLOSE, close_payload(1000))
                   + ws_frame(OP_BINARY, encode(frame(id=1, ping={})))
                   + ws_frame(OP_PING, b"late"))
        fin, op, payload = c.recv_frame()
        assert (op, payload[:2]) == (OP_CLOSE, b"\x03\xe8")
        assert c.wait_eof(10)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100,
                                  2000, 2999, 5000, 65535])
def test_close_with_invalid_code_is_1002(nginx, code):
    n = nginx(LONG)
    with client(n) as c:
        c.send_close(code)
        closed_with(n, c, 1002, "client sent invalid close frame",
                    reply=False)


def test_close_with_one_byte_is_1002(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_CLOSE, b"\x03")
        closed_with(n, c, 1002, "client sent invalid close frame",
                    reply=False)


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xc0\xaf", b"\xed\xa0\x80",
                                    b"\xe2\x82", b"\xf4\x90\x80\x80",
                                    b"\xf8\x88\x80\x80\x80", b"a\x80b"],
                         ids=["ff", "overlong", "surrogate", "truncated",
                              "above-10ffff", "5-byte", "lone-continuation"])
def test_close_with_invalid_utf8_is_1007(nginx, reason):
    n = nginx(LONG)
    with client(n) as c:
        c.send_close(1000, reason)
        closed_with(n, c, 1007, "client sent invalid close frame",
                    reply=False)


def test_server_closes_tcp_when_client_never_answers_its_close(nginx):
    # the client neither answers the close nor closes its side
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_BINARY, b"x", mask=False)
        closed_with(n, c, 1002, "client sent invalid WebSocket frame: "
                    "unmasked client frame", reply=False, timeout=15)


# --------------------------------------------------------------------------
# the im.Frame layer

@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x08",
                                     b"\x62\x05ab", b"\x08\x80\x80\x80\x80"
                                     b"\x80\x80\x80\x80\x80\x80\x01",
                                     b"\xb8\x01\x01", b"\x0a\x01\x00"],
                         ids=["ff", "truncated-varint", "truncated-bytes",
                              "overlong-varint", "body-as-varint",
                              "id-as-bytes"])
def test_garbage_protobuf_is_bad_frame(nginx, garbage):
    n = nginx(LONG)
    with client(n) as c:
        c.send_frame(OP_BINARY, garbage)
        f = expect_error(c, 0, "BAD_FRAME")
        assert f.error.reason
        ping_pong(c)
    n.wait_log(r"\[info\] .*client sent a frame that is not an im.Frame")


def test_frame_without_body_is_bad_frame(nginx):
    n = nginx(LONG)
    with client(n) as c:
        c.send_pb(frame(id=7))
        expect_error(c, 7, "BAD_FRAME")
        c.send_frame(OP_BINARY, b"")
        expect_error(c, 0, "BAD_FRAME")
        ping_pong(c)
    n.wait_log(r"\[info\] .*client sent an empty frame")


@pytest.mark.parametrize("name", ["auth_ok", "send_ack", "message",
                                  "sync_done", "presence", "error", "goaway",
                                  "ok"])
def test_server_frame_from_client_is_bad_frame(nginx, name):
    n = nginx(LONG)
    with client(n) as c:
        c.send_pb(frame(id=21, **{name: {}}))
        expect_error(c, 21, "BAD_FRAME")
        ping_pong(c)
    n.wait_log(r"\[info\] .*client sent server frame")


@pytest.mark.parametrize("name,fields", [
    ("send", {"to": "bob", "body": b"hi", "client_msg_id": "c1"}),
    ("sync", {"after": "0-0", "limit": 10}),
    ("presence_sub", {"users": ["bob"]}),
    ("group_join", {"group": "g1"}),
    ("group_leave", {"group": "g1"}),
    ("ack", {"up_to": "1-0"}),
    ("typing", {"to": "bob"}),
])
def test_request_before_auth_is_unauthenticated(nginx, name, fields):
    n = nginx(LONG)
    with client(n) as c:
        c.send_pb(frame(id=31, **{name: fields}))
        expect_error(c, 31, "UNAUTHENTICATED")
        ping_pong(c)
    n.wait_log(r"\[info\] .*client sent frame \d+ before Auth")


def test_unknown_fields_are_ignored(nginx):
    n = nginx(LONG)
    with client(n) as c:
        # field 99 (varint) before the Ping body: proto3 skips it
        c.send_frame(OP_BINARY, b"\x98\x06\x01"
                     + encode(frame(id=3, ping={"ts_ms": 8})))
        f = c.recv_pb()
        assert (body(f), f.id, f.pong.ts_ms) == ("pong", 3, 8)


# --------------------------------------------------------------------------
# heartbeats and timeouts

def test_server_pings_an_idle_client(nginx):
    n = nginx(LONG + " im_ping_interval 500ms; im_idle_timeout 30s;")
    with client(n) as c:
        assert c.recv_frame(timeout=10) == (True, OP_PING, b"")
        c.send_frame(OP_PONG)
        assert c.recv_frame(timeout=10) == (True, OP_PING, b"")
        ping_pong(c)


def test_idle_client_closed_with_1001_while_answering_one_stays(nginx):
    n = nginx(LONG + " im_ping_interval 500ms; im_idle_timeout 1500ms;")

    async def go():
        # the library answers every ping with a pong
        async with ws_connect(n.url) as ws:
            loop = asyncio.get_running_loop()

            def silent():
                with client(n) as c:
                    code, reason = c.recv_close(timeout=15)
                    pings = [op for op, _ in c.skipped if op == OP_PING]
                    c.send_close(code)
                    return code, len(pings), c.wait_eof(10)

            code, pings, eof = await loop.run_in_executor(None, silent)
            assert code == 1001
            assert pings >= 1, "closed as idle without being pinged"
            assert eof
            assert ws.open, "the client that answers pings was closed"
            await send_frame(ws, frame(id=2, ping={"ts_ms": 2}))
            f = await recv_frame(ws)
            assert (body(f), f.id) == ("pong", 2)

    run(go(), timeout=40)
    n.wait_log(r"\[info\] .*client is idle")


def test_stalled_frame_is_closed_as_idle(nginx):
    # half a frame holds nothing open: the idle timeout still applies
    n = nginx(LONG + " im_ping_interval 500ms; im_idle_timeout 1500ms;")
    with client(n) as c:
        c.send_raw(ws_frame(OP_BINARY, encode(frame(id=1, ping={})))[:5])
        closed_with(n, c, 1001, "client is idle")


def test_no_auth_in_time_is_1008(nginx):
    n = nginx("im_auth_timeout 1s;")
    with client(n) as c:
        reason = closed_with(n, c, 1008, "client sent no Auth in time")
        assert reason


def test_pings_do_not_stand_in_for_auth(nginx):
    n = nginx("im_auth_timeout 1s;")
    with client(n) as c:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            c.send_pb(frame(id=1, ping={"ts_ms": 1}))
            fin, op, payload = c.recv_frame()
            if op == OP_CLOSE:
                assert struct.unpack("!H", payload[:2])[0] == 1008
                break
            assert decode(payload).id == 1
            time.sleep(0.1)
        else:
            pytest.fail("an unauthenticated client outlived im_auth_timeout")
    n.wait_log(r"\[info\] .*client sent no Auth in time")


# --------------------------------------------------------------------------
# byte by byte, and isolation

def test_every_frame_byte_by_byte(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        status, _ = c.handshake(split=1, delay=0.0005)
        assert status == 101

        def feed(data):
            c.send_raw(data, split=1, delay=0.0005)

        feed(ws_frame(OP_BINARY, encode(frame(id=1, ping={"ts_ms": 11}))))
        f = c.recv_pb()
        assert (body(f), f.id, f.pong.ts_ms) == ("pong", 1, 11)

        feed(ws_frame(OP_PING, b"byte by byte"))
        assert c.recv_frame() == (True, OP_PONG, b"byte by byte")

        feed(ws_frame(OP_PING, bytes(range(125))))
        assert c.recv_frame() == (True, OP_PONG, bytes(range(125)))

        data = encode(frame(id=2, ping={"ts_ms": 22}))
        feed(ws_frame(OP_BINARY, data[:3], fin=False)
             + ws_frame(OP_PING, b"mid")
             + ws_frame(OP_CONT, data[3:]))
        assert c.recv_frame() == (True, OP_PONG, b"mid")
        f = c.recv_pb()
        assert (body(f), f.id, f.pong.ts_ms) == ("pong", 2, 22)

        feed(ws_frame(OP_BINARY, sized_send(300, id=3)))
        expect_error(c, 3, "UNAUTHENTICATED")

        feed(ws_frame(OP_BINARY, b"\xff\xff"))
        expect_error(c, 0, "BAD_FRAME")

        feed(ws_frame(OP_CLOSE, close_payload(1000, "bye")))
        assert c.recv_close()[0] == 1000
        assert c.wait_eof(10)


def test_bad_input_byte_by_byte_is_1002(nginx):
    n = nginx(LONG)
    with client(n) as c:
        try:
            c.send_raw(ws_frame(OP_BINARY, b"", length=5, length_form=16),
                       split=1, delay=0.001)
        except OSError:
            pass            # the server may be gone before the mask key
        framing_error(n, c, 1002, "length not minimally encoded")


def test_bad_input_does_not_affect_another_connection(nginx):
    n = nginx(LONG + " im_max_frame 1k;")

    def bad_clients():
        with client(n) as c:
            c.send_frame(OP_BINARY, b"x", mask=False)
            assert c.recv_close()[0] == 1002
        with client(n) as c:
            c.send_frame(OP_BINARY, b"\x00" * 64, length=2 ** 62)
            assert c.recv_close()[0] == 1009
        with client(n) as c:
            c.send_frame(OP_TEXT, b"hi")
            assert c.recv_close()[0] == 1003
        with client(n) as c:
            c.send_close(1005)
            assert c.recv_close()[0] == 1002
        with client(n) as c:
            c.send_frame(OP_BINARY, b"\xff\xff")
            expect_error(c, 0, "BAD_FRAME")
        with RawClient(n.port) as c:
            assert c.handshake(method="POST")[0] == 405
        with RawClient(n.port) as c:
            c.send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4)
        with client(n) as c:
            data = encode(frame(id=1, ping={}))
            c.send_frame(OP_BINARY, data[:1], fin=False)
            # and leave in the middle of a fragmented message

    async def go():
        async with ws_connect(n.url) as ws:
            await send_frame(ws, frame(id=1, ping={"ts_ms": 1}))
            assert body(await recv_frame(ws)) == "pong"
            await asyncio.get_running_loop().run_in_executor(None,
                                                             bad_clients)
            await send_frame(ws, frame(id=2, ping={"ts_ms": 2}))
            f = await recv_frame(ws)
            assert (body(f), f.id) == ("pong", 2)
            pong = await ws.ping(b"still here")
            await asyncio.wait_for(pong, 5)

    run(go())
