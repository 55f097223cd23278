"""Autobahn 2.x, pings and pongs: a ping is answered with a pong carrying
the same payload, at once and each time; unsolicited pongs are ignored;
a ping over 125 bytes fails the connection."""

import pytest

from abtest import OP_PING, OP_PONG

pytestmark = pytest.mark.category("pings")

BINARY = bytes([0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF])


def test_2_1_ping_without_payload(ab):
    c = ab()
    c.send_ab(OP_PING)
    c.expect_pong(b"")
    c.closing_handshake()


def test_2_2_ping_with_small_text_payload(ab):
    c = ab()
    c.send_ab(OP_PING, b"Hello, world!")
    c.expect_pong(b"Hello, world!")
    c.closing_handshake()


def test_2_3_ping_with_small_binary_payload(ab):
    c = ab()
    c.send_ab(OP_PING, BINARY)
    c.expect_pong(BINARY)
    c.closing_handshake()


def test_2_4_ping_with_125_bytes(ab):
    c = ab()
    c.send_ab(OP_PING, b"\xfe" * 125)
    c.expect_pong(b"\xfe" * 125)
    c.closing_handshake()


def test_2_5_ping_with_126_bytes_fails(ab):
    c = ab()
    c.send_ab(OP_PING, b"\xfe" * 126)
    c.expect_fail(1002)


def test_2_6_ping_with_125_bytes_in_1_byte_chops(ab):
    c = ab()
    c.send_ab(OP_PING, b"\xfe" * 125, chopsize=1)
    c.expect_pong(b"\xfe" * 125)
    c.closing_handshake()


def test_2_7_unsolicited_pong_without_payload(ab):
    c = ab()
    c.send_ab(OP_PONG)
    c.expect_nothing()
    c.closing_handshake()


def test_2_8_unsolicited_pong_with_payload(ab):
    c = ab()
    c.send_ab(OP_PONG, b"unsolicited pong payload")
    c.expect_nothing()
    c.closing_handshake()


def test_2_9_unsolicited_pong_then_ping(ab):
    c = ab()
    c.send_ab(OP_PONG, b"unsolicited pong payload")
    c.send_ab(OP_PING, b"ping payload")
    c.expect_pong(b"ping payload")
    c.closing_handshake()


def test_2_10_ten_pings(ab):
    c = ab()
    for i in range(10):
        c.send_ab(OP_PING, b"payload-%d" % i)
    for i in range(10):
        c.expect_pong(b"payload-%d" % i)
    c.closing_handshake()


def test_2_11_ten_pings_in_1_byte_chops(ab):
    c = ab()
    for i in range(10):
        c.send_ab(OP_PING, b"payload-%d" % i, chopsize=1)
    for i in range(10):
        c.expect_pong(b"payload-%d" % i)
    c.closing_handshake()


def test_ping_between_echoes(ab):
    # an application Ping and a WebSocket ping, answered in order
    c = ab()
    c.send_echo(1)
    c.send_ab(OP_PING, b"ws")
    c.send_echo(2)
    c.expect_echo(1)
    c.expect_pong(b"ws")
    c.expect_echo(2)
    c.closing_handshake()
