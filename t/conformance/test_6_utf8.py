"""Autobahn 6.x, UTF-8 handling.  A binary-only server never reads text
(every text frame is refused with 1003, valid UTF-8 or not), so the
UTF-8 that it does validate is a close frame's reason: Markus Kuhn's
stress test sequences of Autobahn 6.x, as close reasons.  A valid
reason gets the client's code echoed (7.x semantics); an invalid one
fails the connection with 1007.  The verdict for each sequence is
autobahn's Utf8Validator, cross-checked with Python's strict decoder."""

import pytest

from abtest import utf8_valid
from imtest import OP_CONT, OP_TEXT

pytestmark = pytest.mark.category("utf8")

KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"


def _sequences():
    seq = [
        ("6.1.1", b""),
        ("6.2.1", "Hello-µ@ßöäüàá-UTF-8!!".encode()),
        ("6.3.1", KOSME + b"\xed\xa0\x80" + b"edited"),
        ("6.4.1", KOSME + b"\xf4\x90\x80\x80" + b"edited"),
        ("6.5.1", KOSME),
    ]
    seq += [("6.6.%d" % (i + 1), KOSME[:i + 1]) for i in range(len(KOSME))]
    seq += [("6.7.%d" % (i + 1), s) for i, s in enumerate(
        [b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"])]
    seq += [("6.8.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"])]
    seq += [("6.9.%d" % (i + 1), s) for i, s in enumerate(
        [b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"])]
    seq += [("6.10.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xf7\xbf\xbf\xbf", b"\xfb\xbf\xbf\xbf\xbf",
         b"\xfd\xbf\xbf\xbf\xbf\xbf"])]
    seq += [("6.11.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd",
         b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80"])]
    cont = bytes(range(0x80, 0xC0))
    seq += [("6.12.%d" % (i + 1), s) for i, s in enumerate(
        [b"\x80", b"\xbf", b"\x80\xbf", b"\x80\xbf\x80", b"\x80\xbf\x80\xbf",
         b"\x80\xbf\x80\xbf\x80", b"\x80\xbf\x80\xbf\x80\xbf", cont])]
    seq += [("6.13.%d" % (i + 1), s) for i, s in enumerate(
        [b" ".join(bytes([b]) for b in range(0xC0, 0xE0)) + b" ",
         b" ".join(bytes([b]) for b in range(0xE0, 0xF0)) + b" ",
         b" ".join(bytes([b]) for b in range(0xF0, 0xF8)) + b" ",
         b" ".join(bytes([b]) for b in range(0xF8, 0xFC)) + b" ",
         b" ".join(bytes([b]) for b in range(0xFC, 0xFE)) + b" "])]
    missing = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80",
               b"\xfc\x80\x80\x80\x80", b"\xdf", b"\xef\xbf",
               b"\xf7\xbf\xbf", b"\xfb\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf"]
    seq += [("6.14.%d" % (i + 1), s) for i, s in enumerate(missing)]
    seq += [("6.15.1", b"".join(missing))]
    seq += [("6.16.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"])]
    seq += [("6.17.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",
         b"\xf8\x80\x80\x80\xaf", b"\xfc\x80\x80\x80\x80\xaf"])]
    seq += [("6.18.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbf",
         b"\xf8\x87\xbf\xbf\xbf", b"\xfc\x83\xbf\xbf\xbf\xbf"])]
    seq += [("6.19.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xc0\x80", b"\xe0\x80\x80", b"\xf0\x80\x80\x80",
         b"\xf8\x80\x80\x80\x80", b"\xfc\x80\x80\x80\x80\x80"])]
    single = [b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80",
              b"\xed\xaf\xbf", b"\xed\xb0\x80", b"\xed\xbe\x80",
              b"\xed\xbf\xbf"]
    seq += [("6.20.%d" % (i + 1), s) for i, s in enumerate(single)]
    pairs = [(a, b) for a in (b"\xed\xa0\x80", b"\xed\xad\xbf",
                              b"\xed\xae\x80", b"\xed\xaf\xbf")
             for b in (b"\xed\xb0\x80", b"\xed\xbf\xbf")]
    seq += [("6.21.%d" % (i + 1), a + b) for i, (a, b) in enumerate(pairs)]
    nonchars = [chr(cp).encode() for plane in range(17)
                for cp in (plane * 0x10000 + 0xFFFE, plane * 0x10000 + 0xFFFF)]
    nonchars += [chr(cp).encode() for cp in range(0xFDD0, 0xFDF0)]
    seq += [("6.22.%d" % (i + 1), s) for i, s in enumerate(nonchars)]
    seq += [("6.23.%d" % (i + 1), s) for i, s in enumerate(
        [b"\xef\xbf\xb9", b"\xef\xbf\xba", b"\xef\xbf\xbb", b"\xef\xbf\xbc",
         b"\xef\xbf\xbd", b"\xef\xbb\xbf", b"\xef\xbf\xbe" * 10])]
    return seq


SEQUENCES = _sequences()


def _strict(data):
    try:
        data.decode("utf-8", errors="strict")
        return True
    except UnicodeDecodeError:
        return False


def test_oracles_agree():
    # autobahn's DFA and Python's decoder: the same verdict on every case
    for case, data in SEQUENCES:
        assert utf8_valid(data) == _strict(data), case
        assert len(data) <= 123, case


@pytest.mark.parametrize("case,data", SEQUENCES,
                         ids=[c for c, _ in SEQUENCES])
def test_close_reason(ab, case, data):
    c = ab()
    c.send_close_ab(1000, data)
    if utf8_valid(data):
        got, _ = c.recv_close(skip=())
        assert got == 1000
        assert c.wait_eof(10)
    else:
        c.expect_fail(1007)


@pytest.mark.parametrize("case,data", SEQUENCES[:6],
                         ids=[c for c, _ in SEQUENCES[:6]])
def test_close_reason_in_1_byte_chops(ab, case, data):
    c = ab()
    c.send_close_ab(1000, data, chopsize=1)
    if utf8_valid(data):
        got, _ = c.recv_close(skip=())
        assert got == 1000
        assert c.wait_eof(10)
    else:
        c.expect_fail(1007)


@pytest.mark.parametrize("data", [b"", KOSME, KOSME + b"\xed\xa0\x80",
                                  b"\xff"])
def test_text_is_refused_whatever_it_holds(ab, data):
    c = ab()
    c.send_ab(OP_TEXT, data)
    c.expect_fail(1003)


def test_fragmented_text_is_refused_at_its_first_frame(ab):
    c = ab()
    c.send_ab(OP_TEXT, KOSME[:5], fin=False)
    c.send_ab(OP_CONT, KOSME[5:])
    c.expect_fail(1003)
