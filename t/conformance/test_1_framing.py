"""Autobahn 1.x, framing: text and binary messages of the sizes at the
length-encoding boundaries.  Text is refused with close 1003 (a
binary-only server); binary messages are echoed as Ping -> Pong, up to
im_max_frame (1 MiB here)."""

import pytest

from abtest import OP_BINARY
from imtest import OP_TEXT

pytestmark = pytest.mark.category("framing")

SIZES = [("1", 0), ("2", 125), ("3", 126), ("4", 127), ("5", 128),
         ("6", 65535), ("7", 65536)]


TEXT = [pytest.param(c, n, id="1.1." + c) for c, n in SIZES + [("8", 65536)]]


@pytest.mark.parametrize("case,size", TEXT)
def test_1_1_text_message_is_1003(ab, case, size):
    c = ab()
    c.send_ab(OP_TEXT, b"*" * size, chopsize=997 if case == "8" else None)
    c.expect_fail(1003)


def test_1_2_1_empty_binary_message(ab):
    # 0 bytes decode to an im.Frame with no body: an error, not a close
    c = ab()
    c.send_ab(OP_BINARY, b"")
    c.expect_error(0, "BAD_FRAME")
    c.echo(1)
    c.closing_handshake()


@pytest.mark.parametrize("case,size", SIZES[1:],
                         ids=["1.2.%s" % c for c, _ in SIZES[1:]])
def test_1_2_binary_message_is_echoed(ab, case, size):
    c = ab()
    c.echo(int(case), size=size)
    c.closing_handshake()


def test_1_2_8_binary_65536_in_chops_of_997(ab):
    c = ab()
    c.echo(8, size=65536, chopsize=997)
    c.closing_handshake()


@pytest.mark.parametrize("size", [1024 * 1024 - 1, 1024 * 1024])
def test_binary_message_up_to_im_max_frame(ab, size):
    c = ab()
    c.echo(9, size=size)
    c.closing_handshake()


def test_binary_message_over_im_max_frame_is_1009(ab):
    c = ab()
    c.send_ab(OP_BINARY, b"\x00", payload_len=1024 * 1024 + 1)
    c.expect_fail(1009)


def test_many_sizes_on_one_connection(ab):
    # every length form, one after the other, each echoed in order
    c = ab()
    sizes = [10, 124, 125, 126, 127, 128, 1000, 65535, 65536, 65537, 200000]
    for i, size in enumerate(sizes, 1):
        c.send_echo(i, size=size)
    for i, _ in enumerate(sizes, 1):
        c.expect_echo(i)
    c.closing_handshake()
