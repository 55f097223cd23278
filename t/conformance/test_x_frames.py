"""What Autobahn never tries: unmasked client frames, length encodings
that are not minimal, 64-bit lengths with the top bit set, lengths the
server could never hold.  Frames are built by imtest.ws_frame(), which
can spell them (autobahn's writer always masks a client frame and always
picks the minimal length form)."""

import pytest

from abtest import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, ping_payload
from imtest import OP_CONT, OP_TEXT, ws_frame

MIB = 1024 * 1024


# --------------------------------------------------------------------------
# masking (RFC 6455 5.1: a server MUST close on an unmasked client frame)

UNMASKED = [
    ("binary", OP_BINARY, b"x" * 10),
    ("binary-empty", OP_BINARY, b""),
    ("text", OP_TEXT, b"hello"),
    ("ping", OP_PING, b"ping"),
    ("pong", OP_PONG, b"pong"),
    ("close", OP_CLOSE, b"\x03\xe8"),
    ("close-empty", OP_CLOSE, b""),
]


@pytest.mark.category("masking")
@pytest.mark.parametrize("name,opcode,payload", UNMASKED,
                         ids=[u[0] for u in UNMASKED])
def test_unmasked_frame_fails(ab, name, opcode, payload):
    c = ab()
    c.send_raw(ws_frame(opcode, payload, mask=False))
    # a text frame is refused at its first byte, before the mask bit
    c.expect_fail(1003 if opcode == OP_TEXT else 1002)


@pytest.mark.category("masking")
def test_unmasked_after_a_good_message(ab):
    c = ab()
    c.echo(1)
    data, _ = ping_payload(2, 2007)
    c.send_raw(ws_frame(OP_BINARY, data, mask=False))
    c.expect_fail(1002)


@pytest.mark.category("masking")
def test_unmasked_continuation(ab):
    c = ab()
    c.send_raw(ws_frame(OP_BINARY, b"ab", fin=False)
               + ws_frame(OP_CONT, b"cd", mask=False))
    c.expect_fail(1002)


@pytest.mark.category("masking")
@pytest.mark.parametrize("key", [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
                                 b"\x80\x01\x7f\xfe"])
def test_any_mask_key_is_fine(ab, key):
    # a zero mask key is still a masked frame
    c = ab()
    data, ts = ping_payload(1, 1007, 300)
    c.sent_ts[1] = ts
    c.send_raw(ws_frame(OP_BINARY, data, mask_key=key), split=7)
    c.expect_echo(1)
    c.closing_handshake()


# --------------------------------------------------------------------------
# length encodings (RFC 6455 5.2: the minimal number of bytes MUST be used;
# the most significant bit of a 64-bit length MUST be 0)

NON_MINIMAL = [pytest.param(f, n, id="%d-bit-%d" % (f, n))
               for f, n in [(16, 0), (16, 1), (16, 125), (64, 0), (64, 125),
                            (64, 126), (64, 65535)]]


@pytest.mark.category("lengths")
@pytest.mark.parametrize("form,length", NON_MINIMAL)
def test_non_minimal_length_fails(ab, form, length):
    c = ab()
    c.send_raw(ws_frame(OP_BINARY, b"x" * length, length_form=form))
    c.expect_fail(1002)


@pytest.mark.category("lengths")
@pytest.mark.parametrize("form,length", [(16, 5), (64, 5)],
                         ids=["ping-16", "close-64"])
def test_non_minimal_length_of_control_frame_fails(ab, form, length):
    c = ab()
    op = OP_PING if form == 16 else OP_CLOSE
    c.send_raw(ws_frame(op, b"\x03\xe8abc", length_form=form))
    c.expect_fail(1002)


@pytest.mark.category("lengths")
@pytest.mark.parametrize("form,length", [(16, 126), (16, 65535),
                                         (64, 65536)],
                         ids=["16-bit-126", "16-bit-65535", "64-bit-65536"])
def test_minimal_lengths_at_the_edges(ab, form, length):
    c = ab()
    data, ts = ping_payload(1, 1007, length)
    c.sent_ts[1] = ts
    c.send_raw(ws_frame(OP_BINARY, data, length_form=form))
    c.expect_echo(1)
    c.closing_handshake()


TOP_BIT = [2 ** 63, 2 ** 63 + 5, 2 ** 64 - 1]


@pytest.mark.category("lengths")
@pytest.mark.parametrize("length", TOP_BIT,
                         ids=["2^63", "2^63+5", "2^64-1"])
def test_64_bit_length_with_top_bit_fails(ab, length):
    c = ab()
    c.send_raw(ws_frame(OP_BINARY, b"", length=length, length_form=64))
    c.expect_fail(1002)


@pytest.mark.category("lengths")
@pytest.mark.parametrize("length", [2 ** 62, 2 ** 32, MIB + 1],
                         ids=["2^62", "2^32", "im_max_frame+1"])
def test_huge_length_is_1009_from_the_header(ab, length):
    # refused before any payload: nothing of it is sent at all
    c = ab()
    c.send_raw(ws_frame(OP_BINARY, b"", length=length))
    c.expect_fail(1009)


@pytest.mark.category("lengths")
def test_fragments_adding_up_over_im_max_frame(ab):
    c = ab()
    c.send_raw(ws_frame(OP_BINARY, b"a" * 1000, fin=False))
    c.send_raw(ws_frame(OP_CONT, b"", length=MIB - 999, fin=False))
    c.expect_fail(1009)


@pytest.mark.category("lengths")
def test_header_byte_by_byte(ab):
    # the 64-bit length and the mask key split at every byte
    c = ab()
    data, ts = ping_payload(1, 1007, 70000)
    c.sent_ts[1] = ts
    frame = ws_frame(OP_BINARY, data)
    c.send_raw(frame[:14], split=1, delay=0.002)
    c.send_raw(frame[14:])
    c.expect_echo(1)
    c.closing_handshake()
