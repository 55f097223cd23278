"""Autobahn 4.x, opcodes: the reserved non-control (3-7) and control
(0xB-0xF) opcodes fail the connection with 1002; what was sent before
is answered, what comes after is not."""

import pytest

from abtest import OP_PING

pytestmark = pytest.mark.category("opcodes")

CASES = [
    # (case, opcode, payload, echo before, ping after)
    ("4.1.1", 3, b"", False, False),
    ("4.1.2", 4, b"reserved opcode payload", False, False),
    ("4.1.3", 5, b"", True, True),
    ("4.1.4", 6, b"reserved opcode payload", True, True),
    ("4.1.5", 7, b"reserved opcode payload", True, True),
    ("4.2.1", 11, b"", False, False),
    ("4.2.2", 12, b"reserved opcode payload", False, False),
    ("4.2.3", 13, b"", True, True),
    ("4.2.4", 14, b"reserved opcode payload", True, True),
    ("4.2.5", 15, b"reserved opcode payload", True, True),
]


@pytest.mark.parametrize("case,opcode,payload,before,after", CASES,
                         ids=[c[0] for c in CASES])
def test_reserved_opcode_fails(ab, case, opcode, payload, before, after):
    c = ab()
    if before:
        c.send_echo(1)
    c.send_ab(opcode, payload)
    if after:
        c.send_ab(OP_PING)
    if before:
        c.expect_echo(1)
    c.expect_fail(1002)


@pytest.mark.parametrize("opcode", [3, 7, 11, 15])
def test_reserved_opcode_in_1_byte_chops(ab, opcode):
    c = ab()
    c.send_ab(opcode, b"payload", chopsize=1)
    c.expect_fail(1002)
