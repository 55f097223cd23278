"""The opening handshake, beyond Autobahn: requests that must be refused
(and with which HTTP status), Origin against im_origins, and the
negotiation of the im.v1 subprotocol."""

import pytest

from abtest import ABClient, CONF, ping_payload

ORIGINS = "https://chat.example.com http://localhost:8080"
SERVER = CONF + " im_origins %s;" % ORIGINS


def handshake(server, **kw):
    c = ABClient(server.port)
    try:
        status, hdrs = c.handshake(**kw)
        return status, hdrs, c
    except Exception:
        c.close()
        raise


def refused(server, status, **kw):
    got, hdrs, c = handshake(server, **kw)
    with c:
        assert got == status, "HTTP %s, expected %s: %r" % (
            got, status, c.response)
        assert hdrs.get("connection", "").lower() == "close"
        assert hdrs.get("content-length") == "0"
        assert c.wait_eof(5), "connection kept after an error response"
    return hdrs


# --------------------------------------------------------------------------
# negatives

KEY = "dGhlIHNhbXBsZSBub25jZQ=="

BAD = [
    ("post", 405, dict(method="POST")),
    ("head", 405, dict(method="HEAD")),
    ("lower-case-get", 405, dict(method="get")),
    ("http-1.0", 400, dict(version="HTTP/1.0")),
    ("http-2.0", 400, dict(version="HTTP/2.0")),
    ("no-version", 400, dict(version="")),
    ("space-in-target", 400, dict(path="/a b")),
    ("ctl-in-target", 400, dict(path="/a\x01b")),
    ("no-host", 400, dict(headers={"Host": None})),
    ("no-upgrade", 426, dict(headers={"Upgrade": None})),
    ("upgrade-h2c", 426, dict(headers={"Upgrade": "h2c"})),
    ("no-connection", 400, dict(headers={"Connection": None})),
    ("connection-keep-alive", 400, dict(headers={"Connection":
                                                 "keep-alive"})),
    ("no-version-header", 426, dict(headers={"Sec-WebSocket-Version":
                                             None})),
    ("version-8", 426, dict(headers={"Sec-WebSocket-Version": "8"})),
    ("version-13-and-8", 426, dict(extra_headers=[
        ("Sec-WebSocket-Version", "8")])),
    ("no-key", 400, dict(headers={"Sec-WebSocket-Key": None})),
    ("key-15-bytes", 400, dict(headers={"Sec-WebSocket-Key":
                                        "AAAAAAAAAAAAAAAAAAAA"})),
    ("key-17-bytes", 400, dict(headers={"Sec-WebSocket-Key":
                                        "AAAAAAAAAAAAAAAAAAAAAAA="})),
    ("key-not-base64", 400, dict(headers={"Sec-WebSocket-Key":
                                          "!!!!!!!!!!!!!!!!!!!!!!=="})),
    ("key-bad-last-char", 400, dict(headers={"Sec-WebSocket-Key":
                                             "dGhlIHNhbXBsZSBub25jZB=="})),
    ("two-keys", 400, dict(extra_headers=[("Sec-WebSocket-Key", KEY)])),
    ("header-no-colon", 400, dict(extra_headers=[("X-Bad\r\nY", "1")])),
    ("header-name-space", 400, dict(extra_headers=[("Bad Name", "1")])),
    ("two-origins", 400, dict(headers={"Origin": "https://chat.example.com"},
                              extra_headers=[("Origin",
                                              "https://chat.example.com")])),
]


@pytest.mark.category("handshake")
@pytest.mark.parametrize("name,status,kw", BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_refused(server, name, status, kw):
    hdrs = refused(server, status, **kw)
    if status == 426:
        assert hdrs.get("upgrade", "").lower() == "websocket"
        assert hdrs.get("sec-websocket-version") == "13"
    if status == 405:
        assert hdrs.get("allow") == "GET"


@pytest.mark.category("handshake")
def test_request_over_8k_is_431(server):
    c = ABClient(server.port)
    with c:
        c.send_raw(c.request(extra_headers=[("X-Pad", "a" * 9000)])[:9000])
        status, _ = c.read_response()
        assert status == 431
        assert c.wait_eof(5)


@pytest.mark.category("handshake")
def test_not_http_at_all(server):
    c = ABClient(server.port)
    with c:
        c.send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4
                   + b"\r\n\r\n")
        status, _ = c.read_response()
        assert status in (400, 405)
        assert c.wait_eof(5)


@pytest.mark.category("handshake")
def test_request_byte_by_byte(server):
    c = ABClient(server.port)
    with c:
        c.send_raw(c.request(), split=1, delay=0.001)
        status, _ = c.read_response()
        assert status == 101
        c.echo(1)
        c.closing_handshake()


@pytest.mark.category("handshake")
def test_request_with_frames_behind_it_in_one_write(server):
    c = ABClient(server.port)
    with c:
        data, ts = ping_payload(1, 1007)
        c.sent_ts[1] = ts
        c.send_raw(c.request() + c.framer.frame(2, data)[0])
        status, _ = c.read_response()
        assert status == 101
        c.expect_echo(1)
        c.closing_handshake()


@pytest.mark.category("handshake")
def test_accept_key_of_rfc_6455_sample(server):
    got, hdrs, c = handshake(server, headers={"Sec-WebSocket-Key": KEY})
    with c:
        assert got == 101
        assert hdrs["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert hdrs["upgrade"].lower() == "websocket"
        assert "upgrade" in hdrs["connection"].lower()


# --------------------------------------------------------------------------
# Origin (im_origins https://chat.example.com http://localhost:8080)

@pytest.mark.category("origin")
@pytest.mark.parametrize("origin", [
    "https://chat.example.com", "HTTPS://CHAT.EXAMPLE.COM",
    "http://localhost:8080"])
def test_listed_origin_is_accepted(server, origin):
    got, _, c = handshake(server, headers={"Origin": origin})
    with c:
        assert got == 101
        c.echo(1)


@pytest.mark.category("origin")
@pytest.mark.parametrize("origin", [
    "https://evil.example.com", "http://chat.example.com",
    "https://chat.example.com:443", "https://chat.example.com.evil.test",
    "https://chat.example.co", "http://localhost", "http://localhost:80800",
    "null", "", "https://chat.example.com/"])
def test_other_origin_is_403(server, origin):
    refused(server, 403, headers={"Origin": origin})


@pytest.mark.category("origin")
def test_no_origin_is_accepted(server):
    got, _, c = handshake(server, headers={"Origin": None})
    with c:
        assert got == 101


@pytest.mark.category("origin")
def test_any_origin_without_im_origins(make_server):
    n = make_server(CONF)
    got, _, c = handshake(n, headers={"Origin": "https://anything.test"})
    with c:
        assert got == 101
        c.echo(1)


# --------------------------------------------------------------------------
# subprotocol (RFC 6455 4.2.2: the server picks one the client offered,
# or none; the client fails the connection on any other answer)

@pytest.mark.category("subprotocol")
@pytest.mark.parametrize("offer", ["im.v1", "chat, im.v1", "im.v1, chat",
                                   " chat ,\tim.v1 "])
def test_im_v1_is_selected(server, offer):
    got, hdrs, c = handshake(server,
                             headers={"Sec-WebSocket-Protocol": offer})
    with c:
        assert got == 101
        assert hdrs.get("sec-websocket-protocol") == "im.v1"


@pytest.mark.category("subprotocol")
def test_im_v1_in_a_second_header_line(server):
    got, hdrs, c = handshake(server, headers={
        "Sec-WebSocket-Protocol": "chat"}, extra_headers=[
        ("Sec-WebSocket-Protocol", "im.v1")])
    with c:
        assert got == 101
        assert hdrs.get("sec-websocket-protocol") == "im.v1"


@pytest.mark.category("subprotocol")
@pytest.mark.parametrize("offer", [None, "chat", "mqtt, wamp.2.json",
                                   "im.v2", "im.v1x", "xim.v1", "im"])
def test_no_subprotocol_when_im_v1_not_offered(server, offer):
    got, hdrs, c = handshake(server,
                             headers={"Sec-WebSocket-Protocol": offer})
    with c:
        assert got == 101
        assert "sec-websocket-protocol" not in hdrs
        c.echo(1)


@pytest.mark.category("subprotocol")
def test_subprotocol_answer_is_one_the_client_offered(server):
    # RFC 6455 4.1: a client fails the connection if the server answers
    # a subprotocol it did not offer; tokens are compared as sent
    got, hdrs, c = handshake(server,
                             headers={"Sec-WebSocket-Protocol": "IM.V1"})
    with c:
        assert got == 101
        assert hdrs.get("sec-websocket-protocol") in (None, "IM.V1")


@pytest.mark.category("subprotocol")
def test_extensions_are_never_negotiated(server):
    got, hdrs, c = handshake(server, headers={
        "Sec-WebSocket-Extensions": "permessage-deflate; "
                                    "client_max_window_bits"})
    with c:
        assert got == 101
        assert "sec-websocket-extensions" not in hdrs
        c.echo(1)
