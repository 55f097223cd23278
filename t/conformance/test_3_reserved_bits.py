"""Autobahn 3.x, reserved bits: no extension is negotiated, so any RSV
bit fails the connection with 1002, whatever came before it and however
the frame is cut; nothing sent after it is answered."""

import pytest

from abtest import OP_BINARY, OP_CLOSE, OP_PING
from imtest import OP_TEXT

pytestmark = pytest.mark.category("reserved")


def test_3_1_rsv_1(ab):
    c = ab()
    c.send_ab(OP_TEXT, b"Hello, world!", rsv=1)
    c.expect_fail(1002)


def test_3_2_echo_then_rsv_2_then_ping(ab):
    c = ab()
    c.send_echo(1)
    c.send_ab(OP_BINARY, b"Hello, world!", rsv=2)
    c.send_ab(OP_PING, b"never answered")
    c.expect_echo(1)
    c.expect_fail(1002)


def test_3_3_rsv_3_frame_wise(ab):
    c = ab()
    c.echo(1)
    c.send_ab(OP_BINARY, b"Hello, world!", rsv=3)
    c.send_ab(OP_PING)
    c.expect_fail(1002)


def test_3_4_rsv_4_in_1_byte_chops(ab):
    c = ab()
    c.send_echo(1, chopsize=1)
    c.send_ab(OP_BINARY, b"Hello, world!", rsv=4, chopsize=1)
    c.send_ab(OP_PING, chopsize=1)
    c.expect_echo(1)
    c.expect_fail(1002)


def test_3_5_binary_rsv_5(ab):
    c = ab()
    c.send_ab(OP_BINARY, bytes(range(256)) * 4, rsv=5)
    c.expect_fail(1002)


def test_3_6_ping_rsv_6(ab):
    c = ab()
    c.send_ab(OP_PING, b"ping", rsv=6)
    c.expect_fail(1002)


def test_3_7_close_rsv_7(ab):
    c = ab()
    c.send_ab(OP_CLOSE, b"\x03\xe8", rsv=7)
    c.expect_fail(1002)


@pytest.mark.parametrize("rsv", range(1, 8))
def test_rsv_on_a_continuation(ab, rsv):
    c = ab()
    data = c.framer.frame(OP_BINARY, b"ab", fin=False)[0]
    c.send_raw(data)
    c.send_ab(0, b"cd", rsv=rsv)
    c.expect_fail(1002)
