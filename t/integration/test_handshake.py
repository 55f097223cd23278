"""The WebSocket opening handshake (RFC 6455 section 4) as ngx_im does it."""

import re
import threading

import pytest
import websockets

from imtest import (OP_PING, OP_PONG, RawClient, body, frame, recv_frame,
                    run, send_frame, wait_until, ws_accept, ws_connect,
                    ws_frame, encode, OP_BINARY)


LONG = "im_auth_timeout 60s;"


def info(reason):
    """The error.log regex of a handshake refused for `reason`."""
    return (r"\[info\] .*client sent invalid WebSocket handshake: "
            + re.escape(reason))


def ping_pong(c, id=1, ts=12345):
    """An im Ping on a RawClient gets the Pong with the same id and ts."""
    c.send_pb(frame(id=id, ping={"ts_ms": ts}))
    f = c.recv_pb()
    assert body(f) == "pong" and f.id == id and f.pong.ts_ms == ts, f


# --------------------------------------------------------------------------
# good upgrades

def test_upgrade_with_websockets_library(nginx):
    n = nginx(LONG)

    async def go():
        # the library offers permessage-deflate: ngx_im takes no extension
        async with ws_connect(n.url) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Extensions" not in ws.response_headers
            await send_frame(ws, frame(id=1, ping={"ts_ms": 7}))
            f = await recv_frame(ws)
            assert (body(f), f.id, f.pong.ts_ms) == ("pong", 1, 7)

    run(go())


def test_upgrade_response_raw(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        status, h = c.handshake(path="/any/path?x=1")
        assert status == 101, c.response
        assert c.response.startswith(b"HTTP/1.1 101 ")
        assert h["upgrade"].lower() == "websocket"
        assert "upgrade" in h["connection"].lower()
        assert h["sec-websocket-accept"] == ws_accept(c.key)
        assert "sec-websocket-protocol" not in h
        assert "sec-websocket-extensions" not in h
        ping_pong(c)


def test_upgrade_header_values_case_insensitive(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        c.upgrade(headers={"upgrade": "WebSocket",
                           "CONNECTION": "keep-alive, Upgrade"})
        ping_pong(c)


def test_subprotocol_echoed_when_asked(nginx):
    n = nginx(LONG)

    async def go():
        async with ws_connect(n.url, subprotocols=["im.v1"]) as ws:
            assert ws.subprotocol == "im.v1"
            await send_frame(ws, frame(id=2, ping={"ts_ms": 1}))
            assert body(await recv_frame(ws)) == "pong"

    run(go())

    with RawClient(n.port) as c:
        h = c.upgrade(headers={"Sec-WebSocket-Protocol": "chat, im.v1"})
        assert h["sec-websocket-protocol"] == "im.v1"


@pytest.mark.parametrize("offer", [None, "chat", "im.v2, superchat"])
def test_subprotocol_not_echoed_when_not_asked(nginx, offer):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        h = c.upgrade(headers={"Sec-WebSocket-Protocol": offer})
        assert "sec-websocket-protocol" not in h
        ping_pong(c)


# --------------------------------------------------------------------------
# refused upgrades: the HTTP error, the connection closed, an [info] line

def refused(n, status, reason, **kw):
    """Handshake with **kw must get `status`, then the server closes."""
    with RawClient(n.port) as c:
        got, h = c.handshake(**kw)
        assert got == status, c.response
        assert h.get("content-length") == "0"
        assert c.buf == b"", "a body or frames after an HTTP error"
        assert c.wait_eof(5), "server kept the connection after %d" % got
    n.wait_log(info(reason))
    return h


def test_non_get_is_405(nginx):
    n = nginx()
    for method in ("POST", "HEAD", "get"):
        h = refused(n, 405, "method is not GET", method=method)
        assert h["allow"] == "GET"


def test_http_1_0_is_400(nginx):
    n = nginx()
    refused(n, 400, "bad request line", version="HTTP/1.0")


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1", "http/1.1",
                                     "HTTP/1.1 extra"])
def test_bad_request_line_is_400(nginx, version):
    n = nginx()
    refused(n, 400, "bad request line", version=version)


def test_missing_host_is_400(nginx):
    n = nginx()
    refused(n, 400, "no Host header", headers={"Host": None})


def test_plain_get_is_426(nginx):
    n = nginx()
    h = refused(n, 426, "not a WebSocket upgrade",
                headers={"Upgrade": None, "Connection": None,
                         "Sec-WebSocket-Key": None,
                         "Sec-WebSocket-Version": None})
    assert h["sec-websocket-version"] == "13"
    assert h["upgrade"].lower() == "websocket"


def test_upgrade_to_other_protocol_is_426(nginx):
    n = nginx()
    h = refused(n, 426, "not a WebSocket upgrade", headers={"Upgrade": "h2c"})
    assert h["sec-websocket-version"] == "13"


@pytest.mark.parametrize("connection", [None, "keep-alive", "close, upgraded"])
def test_connection_without_upgrade_is_400(nginx, connection):
    n = nginx()
    refused(n, 400, 'no "Connection: Upgrade"',
            headers={"Connection": connection})


@pytest.mark.parametrize("version", ["8", "12", "14", "", "13, 8", None])
def test_wrong_version_is_426(nginx, version):
    n = nginx()
    h = refused(n, 426, "WebSocket version is not 13",
                headers={"Sec-WebSocket-Version": version})
    assert h["sec-websocket-version"] == "13"


def test_missing_key_is_400(nginx):
    n = nginx()
    refused(n, 400, "no Sec-WebSocket-Key",
            headers={"Sec-WebSocket-Key": None})


@pytest.mark.parametrize("key", [
    "dGhlIHNhbXBsZSBub25j",             # 20 characters (15 bytes)
    "dGhlIHNhbXBsZSBub25jZQ==AA",       # 26 characters
    "dGhlIHNhbXBsZSBub25jZSEh",         # 24 characters, 18 bytes, no '='
    "!!!!!!!!!!!!!!!!!!!!!!==",         # not base64 at all
    "dGhlIHNhbXBsZSBub25j-_==",         # base64url alphabet
    "dGhlIHNhbXBsZSBub25jZB==",         # non-zero padding bits
    "",                                 # empty
])
def test_invalid_key_is_400(nginx, key):
    n = nginx()
    refused(n, 400, "bad Sec-WebSocket-Key",
            headers={"Sec-WebSocket-Key": key})


def test_two_keys_is_400(nginx):
    n = nginx()
    refused(n, 400, "bad Sec-WebSocket-Key",
            extra_headers=[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])


def test_sample_key_of_rfc_6455(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        h = c.upgrade(headers={"Sec-WebSocket-Key":
                               "dGhlIHNhbXBsZSBub25jZQ=="})
        assert h["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("line", ["NoColonHere", ": empty name",
                                  "Bad Name: x", " folded: x"])
def test_bad_header_line_is_400(nginx, line):
    n = nginx()
    with RawClient(n.port) as c:
        req = c.request().replace(b"\r\n\r\n",
                                  b"\r\n" + line.encode() + b"\r\n\r\n")
        c.send_raw(req)
        status, _ = c.read_response()
        assert status == 400, c.response
        assert c.wait_eof(5)
    n.wait_log(r"\[info\] .*client sent invalid WebSocket handshake: bad "
               r"header (line|name)")


@pytest.mark.parametrize("split", [None, 1000])
def test_request_over_8k_without_end_is_431(nginx, split):
    n = nginx()
    with RawClient(n.port) as c:
        head = (b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000)
        try:
            c.send_raw(head, split=split, delay=0.01 if split else 0)
        except (BrokenPipeError, ConnectionResetError):
            pass            # the server may answer before the last piece
        status, _ = c.read_response(timeout=5)
        assert status == 431, c.response
        assert c.wait_eof(5)
    n.wait_log(info("handshake too large"))


@pytest.mark.parametrize("split", [None, 4096], ids=["one-write", "pieces"])
def test_complete_request_over_8k_is_431_however_it_arrives(nginx, split):
    # the 8 KiB limit must not depend on how TCP cuts the request
    n = nginx()
    with RawClient(n.port) as c:
        req = c.request(extra_headers=[("X-Pad", "a" * 20000)])
        try:
            c.send_raw(req, split=split, delay=0.01 if split else 0)
        except (BrokenPipeError, ConnectionResetError):
            pass            # the server may answer before the last piece
        status, _ = c.read_response()
        assert status == 431, c.response
    n.wait_log(info("handshake too large"))


# --------------------------------------------------------------------------
# im_origins

ORIGINS = "im_auth_timeout 60s; im_origins https://chat.example.com;"


@pytest.mark.parametrize("origin", ["https://evil.example",
                                    "http://chat.example.com",
                                    "https://chat.example.com:8443",
                                    "https://chat.example.com.evil.example",
                                    "https://chat.example.co",
                                    "null"])
def test_origin_not_allowed_is_403(nginx, origin):
    n = nginx(ORIGINS)
    refused(n, 403, "Origin not allowed", headers={"Origin": origin})


@pytest.mark.parametrize("origin", ["https://chat.example.com",
                                    "HTTPS://Chat.Example.COM"])
def test_origin_allowed_is_101(nginx, origin):
    n = nginx(ORIGINS)
    with RawClient(n.port) as c:
        c.upgrade(headers={"Origin": origin})
        ping_pong(c)


def test_no_origin_is_101(nginx):
    n = nginx(ORIGINS)
    with RawClient(n.port) as c:
        c.upgrade(headers={"Origin": None})
        ping_pong(c)


def test_two_origins_is_400(nginx):
    n = nginx(ORIGINS)
    refused(n, 400, "more than one Origin",
            headers={"Origin": "https://chat.example.com"},
            extra_headers=[("Origin", "https://chat.example.com")])


def test_origins_with_websockets_library(nginx):
    n = nginx(ORIGINS)

    async def go():
        async with ws_connect(n.url, origin="https://chat.example.com") as ws:
            await send_frame(ws, frame(id=1, ping={"ts_ms": 1}))
            assert body(await recv_frame(ws)) == "pong"
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await ws_connect(n.url, origin="https://evil.example")
        assert e.value.status_code == 403

    run(go())


def test_any_origin_without_im_origins(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        c.upgrade(headers={"Origin": "https://evil.example"})
        ping_pong(c)


# --------------------------------------------------------------------------
# how the request arrives

def test_pipelined_frames_after_request(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        extra = (ws_frame(OP_BINARY, encode(frame(id=3,
                                                  ping={"ts_ms": 99})))
                 + ws_frame(OP_PING, b"right behind"))
        status, _ = c.handshake(extra=extra)
        assert status == 101
        f = c.recv_pb()
        assert (body(f), f.id, f.pong.ts_ms) == ("pong", 3, 99)
        assert c.recv_frame() == (True, OP_PONG, b"right behind")


def test_request_split_byte_by_byte(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        status, h = c.handshake(split=1, delay=0.001)
        assert status == 101
        assert h["sec-websocket-accept"] == ws_accept(c.key)
        ping_pong(c)


def test_request_split_with_pipelined_frame(nginx):
    n = nginx(LONG)
    with RawClient(n.port) as c:
        extra = ws_frame(OP_BINARY, encode(frame(id=4, ping={"ts_ms": 5})))
        status, _ = c.handshake(extra=extra, split=7, delay=0.002)
        assert status == 101
        f = c.recv_pb()
        assert (body(f), f.id) == ("pong", 4)


def test_slowloris_does_not_block_others(nginx):
    n = nginx("im_auth_timeout 30s;")
    slow = RawClient(n.port)
    req = slow.request()
    sent = [0]
    others_done = threading.Event()

    def dribble():
        # one byte per 0.2 s, never the last one until the others are done
        while sent[0] < len(req) - 1 and not others_done.is_set():
            slow.send_raw(req[sent[0]:sent[0] + 1])
            sent[0] += 1
            others_done.wait(0.2)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        wait_until(lambda: sent[0] >= 2, 5, what="the slow client")

        async def fast():
            async with ws_connect(n.url) as ws:
                await send_frame(ws, frame(id=1, ping={"ts_ms": 3}))
                f = await recv_frame(ws)
                assert (body(f), f.id) == ("pong", 1)

        run(fast())
        with RawClient(n.port) as c:
            c.upgrade()
            ping_pong(c)
        assert sent[0] < len(req), "the slow handshake was complete"
    finally:
        others_done.set()
        t.join(5)

    # and the slow client's handshake still completes
    slow.send_raw(req[sent[0]:])
    status, _ = slow.read_response()
    assert status == 101
    ping_pong(slow)
    slow.close()


def test_stalled_handshake_closed_after_auth_timeout(nginx):
    n = nginx("im_auth_timeout 1s;")
    with RawClient(n.port) as c:
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert c.wait_eof(10), "a stalled handshake was kept open"
        assert c.buf == b""
    n.wait_log(r"\[info\] .*client timed out in WebSocket handshake")


def test_dribbling_handshake_closed_after_auth_timeout(nginx):
    # bytes arriving do not extend the handshake's time
    n = nginx("im_auth_timeout 1s;")
    with RawClient(n.port) as c:
        req = c.request(extra_headers=[("X-Pad", "p" * 200)])
        closed = False
        for i in range(len(req) - 1):
            try:
                c.send_raw(req[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if c.wait_eof(0.1):
                closed = True
                break
        assert closed, "a dribbling handshake outlived im_auth_timeout"
    n.wait_log(r"\[info\] .*client timed out in WebSocket handshake")


def test_empty_connection_closed_after_auth_timeout(nginx):
    n = nginx("im_auth_timeout 1s;")
    with RawClient(n.port) as c:
        assert c.wait_eof(10)
    n.wait_log(r"\[info\] .*client timed out in WebSocket handshake")


def test_client_gone_during_handshake(nginx):
    n = nginx()
    with RawClient(n.port) as c:
        c.send_raw(b"GET / HTTP/1.1\r\nHost")
    n.wait_log(r"\[info\] .*client closed connection")
    with RawClient(n.port) as c:
        c.upgrade()
        ping_pong(c)
