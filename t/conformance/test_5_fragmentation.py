"""Autobahn 5.x, fragmentation: control frames may not be fragmented;
a fragmented message (text in Autobahn, binary here) is reassembled
whole, with control frames between its fragments; a continuation with
no message in progress, or a new message inside one, fails the
connection with 1002."""

import time

import pytest

from abtest import OP_BINARY, OP_PING, OP_PONG, ping_payload
from imtest import OP_CONT

pytestmark = pytest.mark.category("fragmentation")


def fragments(c, id, parts=2, chopsize=None, ping=None, delay=0.0):
    """Send echo `id` as `parts` fragments; ping=payload puts a ping
    after each fragment but the last."""
    data, ts = ping_payload(id, id * 1000 + 7, 64)
    c.sent_ts[id] = ts
    step = -(-len(data) // parts)
    pieces = [data[i:i + step] for i in range(0, len(data), step)]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        c.send_ab(OP_BINARY if i == 0 else OP_CONT, piece, fin=last,
                  chopsize=chopsize)
        if ping is not None and not last:
            c.send_ab(OP_PING, ping, chopsize=chopsize)
            if delay:
                time.sleep(delay)


def test_5_1_ping_in_2_fragments(ab):
    c = ab()
    c.send_ab(OP_PING, b"fragment1", fin=False)
    c.send_ab(OP_CONT, b"fragment2")
    c.expect_fail(1002)


def test_5_2_pong_in_2_fragments(ab):
    c = ab()
    c.send_ab(OP_PONG, b"fragment1", fin=False)
    c.send_ab(OP_CONT, b"fragment2")
    c.expect_fail(1002)


@pytest.mark.parametrize("case,chop", [("5.3", None), ("5.4", None),
                                       ("5.5", 1)],
                         ids=["5.3", "5.4", "5.5"])
def test_5_3_to_5_5_message_in_2_fragments(ab, case, chop):
    c = ab()
    fragments(c, 1, chopsize=chop)
    c.expect_echo(1)
    c.closing_handshake()


@pytest.mark.parametrize("case,chop", [("5.6", None), ("5.7", None),
                                       ("5.8", 1)],
                         ids=["5.6", "5.7", "5.8"])
def test_5_6_to_5_8_fragments_with_a_ping_between(ab, case, chop):
    c = ab()
    fragments(c, 1, chopsize=chop, ping=b"ping payload")
    c.expect_pong(b"ping payload")
    c.expect_echo(1)
    c.closing_handshake()


@pytest.mark.parametrize("case,chop", [("5.9", None), ("5.10", None),
                                       ("5.11", 1)],
                         ids=["5.9", "5.10", "5.11"])
def test_5_9_to_5_11_continuation_fin_without_a_message(ab, case, chop):
    c = ab()
    c.send_ab(OP_CONT, b"non-continuation payload", chopsize=chop)
    c.send_echo(1, chopsize=chop)
    c.expect_fail(1002)


@pytest.mark.parametrize("case,chop", [("5.12", None), ("5.13", None),
                                       ("5.14", 1)],
                         ids=["5.12", "5.13", "5.14"])
def test_5_12_to_5_14_continuation_without_a_message(ab, case, chop):
    c = ab()
    c.send_ab(OP_CONT, b"non-continuation payload", fin=False,
              chopsize=chop)
    c.send_echo(1, chopsize=chop)
    c.expect_fail(1002)


def test_5_15_message_then_orphan_continuations(ab):
    c = ab()
    fragments(c, 1)
    c.send_ab(OP_CONT, b"fragment3", fin=False)
    c.send_ab(OP_BINARY, b"fragment4")
    c.expect_echo(1)
    c.expect_fail(1002)


def test_5_16_orphan_continuations_around_a_message(ab):
    c = ab()
    for _ in range(2):
        c.send_ab(OP_CONT, b"fragment1", fin=False)
        c.send_ab(OP_BINARY, b"fragment2", fin=False)
        c.send_ab(OP_CONT, b"fragment3")
    c.expect_fail(1002)


def test_5_17_orphan_final_continuations_around_a_message(ab):
    c = ab()
    for _ in range(2):
        c.send_ab(OP_CONT, b"fragment1")
        c.send_ab(OP_BINARY, b"fragment2", fin=False)
        c.send_ab(OP_CONT, b"fragment3")
    c.expect_fail(1002)


def test_5_18_new_message_inside_a_fragmented_one(ab):
    c = ab()
    c.send_ab(OP_BINARY, b"fragment1", fin=False)
    c.send_ab(OP_BINARY, b"fragment2")
    c.expect_fail(1002)


def test_5_19_fragments_and_pings_with_pauses(ab):
    c = ab()
    fragments(c, 1, parts=5, ping=b"pongme!", delay=0.3)
    for _ in range(4):
        c.expect_pong(b"pongme!")
    c.expect_echo(1)
    c.closing_handshake()


def test_5_20_fragments_and_pings_chopped_with_pauses(ab):
    c = ab()
    fragments(c, 1, parts=5, ping=b"pongme!", chopsize=1, delay=0.3)
    for _ in range(4):
        c.expect_pong(b"pongme!")
    c.expect_echo(1)
    c.closing_handshake()


def test_empty_fragments(ab):
    # a message may begin or end with empty fragments
    c = ab()
    data, ts = ping_payload(1, 1007, 40)
    c.sent_ts[1] = ts
    c.send_ab(OP_BINARY, b"", fin=False)
    c.send_ab(OP_CONT, data[:20], fin=False)
    c.send_ab(OP_CONT, b"", fin=False)
    c.send_ab(OP_CONT, data[20:], fin=False)
    c.send_ab(OP_CONT, b"")
    c.expect_echo(1)
    c.closing_handshake()


def test_a_thousand_fragments(ab):
    c = ab()
    data, ts = ping_payload(1, 1007, 1000)
    c.sent_ts[1] = ts
    for i in range(1000):
        c.send_ab(OP_BINARY if i == 0 else OP_CONT, data[i:i + 1],
                  fin=(i == 999))
    c.expect_echo(1)
    c.closing_handshake()


def test_close_inside_a_fragmented_message(ab):
    # control frames may come between fragments, close included
    c = ab()
    c.send_ab(OP_BINARY, b"fragment1", fin=False)
    c.closing_handshake(1000)
