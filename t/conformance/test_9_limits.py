"""Autobahn 9.x, limits and performance, bounded to im_max_frame (1 MiB
here): big binary messages whole, fragmented and chopped into small
writes, and many small messages in a row, all echoed; a message over
im_max_frame is refused with 1009 from its header.  Text (9.1, 9.3,
9.5, 9.7) is refused with 1003, as in 1.1."""

import time

import pytest

from abtest import OP_BINARY, ping_payload
from imtest import OP_CONT, OP_TEXT

pytestmark = pytest.mark.category("limits")

KIB = 1024
MIB = 1024 * KIB


@pytest.mark.parametrize("size", [64 * KIB, 256 * KIB, MIB],
                         ids=["9.2.1-64k", "9.2.2-256k", "9.2.3-1m"])
def test_9_2_binary_message(ab, size):
    c = ab()
    c.echo(1, size=size)
    c.closing_handshake()


@pytest.mark.parametrize("size", [4 * MIB, 16 * MIB],
                         ids=["9.2.4-4m", "9.2.5-16m"])
def test_9_2_binary_message_over_im_max_frame(ab, size):
    c = ab()
    c.send_ab(OP_BINARY, b"\x2a", payload_len=size)
    c.expect_fail(1009)


def test_9_1_text_message(ab):
    c = ab()
    c.send_ab(OP_TEXT, b"*", payload_len=64 * KIB)
    c.expect_fail(1003)


FRAGS = [64, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB]


@pytest.mark.parametrize("frag", FRAGS,
                         ids=["9.4.%d-%d" % (i + 1, f)
                              for i, f in enumerate(FRAGS)])
def test_9_4_fragmented_binary_message(ab, frag):
    # Autobahn: 4 MiB in fragments of 64 B .. 4 MiB; here 1 MiB
    c = ab()
    data, ts = ping_payload(1, 1007, MIB)
    c.sent_ts[1] = ts
    frames = []
    for i in range(0, len(data), frag):
        frames.append(c.framer.frame(
            OP_BINARY if i == 0 else OP_CONT, data[i:i + frag],
            fin=i + frag >= len(data))[0])
    c.send_raw(b"".join(frames))
    c.expect_echo(1, timeout=30)
    c.closing_handshake()


CHOPS = [64, 128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("chop", CHOPS,
                         ids=["9.6.%d-%d" % (i + 1, c)
                              for i, c in enumerate(CHOPS)])
def test_9_6_binary_message_in_chops(ab, chop):
    # Autobahn: 1 MiB written in chops of 64 .. 2048 bytes; here 256 KiB
    c = ab()
    c.echo(1, size=256 * KIB, chopsize=chop)
    c.closing_handshake()


SMALL = [0, 16, 64, 256, KIB, 4 * KIB]


@pytest.mark.parametrize("size", SMALL,
                         ids=["9.8.%d-%d" % (i + 1, s)
                              for i, s in enumerate(SMALL)])
def test_9_8_many_binary_messages(ab, size):
    # Autobahn: 1000 round trips of each size; here 1000 echoes, sent
    # back to back, answered in order (0 bytes: the BAD_FRAME error)
    c = ab()
    start = time.monotonic()
    if size == 0:
        data = c.framer.frame(OP_BINARY, b"")[0]
        c.send_raw(data * 1000)
        for _ in range(1000):
            c.expect_error(0, "BAD_FRAME")
    else:
        size = max(size, 16)
        batch = []
        for i in range(1, 1001):
            payload, ts = ping_payload(i, i * 1000 + 7, size)
            c.sent_ts[i] = ts
            batch.append(c.framer.frame(OP_BINARY, payload)[0])
        c.send_raw(b"".join(batch))
        for i in range(1, 1001):
            c.expect_echo(i)
    assert time.monotonic() - start < 30
    c.closing_handshake()
