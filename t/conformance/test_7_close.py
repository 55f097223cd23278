"""Autobahn 7.x, close handling: the closing handshake, what the server
does with frames after a close, close payloads of every length, the
valid and invalid status codes."""

import struct

import pytest

from abtest import OP_BINARY, OP_CLOSE, OP_PING
from imtest import OP_CONT

pytestmark = pytest.mark.category("close")


def test_7_1_1_echo_then_close(ab):
    c = ab()
    c.echo(1)
    c.closing_handshake(1000)


def test_7_1_2_close_twice(ab):
    c = ab()
    c.send_close_ab(1000)
    c.send_close_ab(1000)
    got, _ = c.recv_close(skip=())
    assert got == 1000
    assert c.wait_eof(10)


def test_7_1_3_close_then_ping(ab):
    c = ab()
    c.send_close_ab(1000)
    c.send_ab(OP_PING, b"Hello World!")
    got, _ = c.recv_close(skip=())
    assert got == 1000
    assert c.wait_eof(10)


def test_7_1_4_close_then_message(ab):
    c = ab()
    c.send_close_ab(1000)
    c.send_echo(1)
    got, _ = c.recv_close(skip=())
    assert got == 1000
    assert c.wait_eof(10)


def test_7_1_5_fragment_close_fragment(ab):
    c = ab()
    c.send_ab(OP_BINARY, b"fragment1", fin=False)
    c.send_close_ab(1000)
    c.send_ab(OP_CONT, b"fragment2")
    got, _ = c.recv_close(skip=())
    assert got == 1000
    assert c.wait_eof(10)


def test_7_1_6_many_messages_then_close(ab):
    # Autobahn sends 256 KiB text messages; here 16 binary echoes of
    # 64 KiB, then a ping and the close: all answered, in order
    c = ab()
    for i in range(1, 17):
        c.send_echo(i, size=65536)
    c.send_ab(OP_PING, b"ping")
    c.send_close_ab(1000)
    for i in range(1, 17):
        c.expect_echo(i)
    c.expect_pong(b"ping")
    got, _ = c.recv_close(skip=())
    assert got == 1000
    assert c.wait_eof(10)


def test_7_3_1_close_without_payload(ab):
    c = ab()
    c.send_ab(OP_CLOSE, b"")
    got, _ = c.recv_close(skip=())
    assert got in (None, 1000)
    assert c.wait_eof(10)


def test_7_3_2_close_with_1_byte_payload(ab):
    c = ab()
    c.send_ab(OP_CLOSE, b"a")
    c.expect_fail(1002)


def test_7_3_3_close_with_code_only(ab):
    c = ab()
    c.closing_handshake(1000)


def test_7_3_4_close_with_code_and_reason(ab):
    c = ab()
    c.closing_handshake(1000, b"Hello World!")


def test_7_3_5_close_with_123_byte_reason(ab):
    c = ab()
    c.closing_handshake(1000, b"*" * 123)


def test_7_3_6_close_with_124_byte_reason(ab):
    # 126 bytes of payload: a control frame over 125
    c = ab()
    c.send_ab(OP_CLOSE, struct.pack("!H", 1000) + b"*" * 124)
    c.expect_fail(1002)


def test_7_5_1_close_with_invalid_utf8_reason(ab):
    c = ab()
    c.send_close_ab(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
                    b"\xed\xa0\x80\x65\x64\x69\x74\x65\x64")
    c.expect_fail(1007)


VALID = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999,
         4000, 4999]
INVALID = [0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100,
           2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID,
                         ids=["7.7.%d-%d" % (i + 1, c)
                              for i, c in enumerate(VALID)])
def test_7_7_valid_close_code_is_echoed(ab, code):
    c = ab()
    c.closing_handshake(code)


@pytest.mark.parametrize("code", INVALID,
                         ids=["7.9.%d-%d" % (i + 1, c) if c < 5000 else
                              "7.13-%d" % c for i, c in enumerate(INVALID)])
def test_7_9_invalid_close_code_fails(ab, code):
    c = ab()
    c.send_close_ab(code)
    c.expect_fail(1002)


def test_server_close_then_client_silence_drops_tcp(ab):
    # the server's own close (a violation here) waits a few seconds at
    # most for the client's, then drops TCP
    c = ab()
    c.send_ab(OP_BINARY, b"x", rsv=1)
    got, _ = c.recv_close(skip=())
    assert got == 1002
    assert c.wait_eof(6), "TCP still open 6 s after the server's close"
