"""Helpers of the conformance suite: autobahn's frame writer without a
transport, a raw client that sends its frames, the binary echo (an
im.Frame Ping answered by a Pong) and autobahn's UTF-8 verdict."""

import os
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from imtest import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG,  # noqa: E402
                    RawClient, body, close_payload, encode, error_code,
                    frame)

from autobahn.websocket.protocol import WebSocketProtocol  # noqa: E402
from autobahn.websocket.utf8validator import Utf8Validator  # noqa: E402


# what Autobahn's limits need: messages up to 1 MiB, no rate limit
CONF = ("im_max_frame 1m; im_send_queue 4m; im_rate off; "
        "im_auth_timeout 120s; im_ping_interval 100s; im_idle_timeout 200s;")


# autobahn's frame writer without a transport

class Framer(WebSocketProtocol):
    """WebSocketProtocol.sendFrame() of autobahn, as the Autobahn
    testsuite's fuzzing client uses it: any opcode, RSV bits, FIN,
    payload_len (a repeated payload), chopsize.  The bytes and the
    chopsize of each frame are collected in .out instead of a socket."""

    def __init__(self):
        # only what sendFrame() reads; no transport, no handshake
        self.factory = types.SimpleNamespace(isServer=False)
        self.maskClientFrames = True
        self.maskServerFrames = False
        self.applyMask = True
        self.logFrames = False
        self.trafficStats = types.SimpleNamespace(
            outgoingWebSocketFrames=0)
        self.out = []

    def sendData(self, data, sync=False, chopsize=None):
        self.out.append((data, chopsize))

    def frame(self, opcode, payload=b"", fin=True, rsv=0, payload_len=None,
              chopsize=None):
        # mask=None: autobahn draws a random mask key and writes it out
        self.sendFrame(opcode=opcode, payload=payload, fin=fin, rsv=rsv,
                       mask=None, payload_len=payload_len, chopsize=chopsize)
        return self.out.pop()


def utf8_valid(data):
    """autobahn's verdict on a byte string: valid UTF-8 or not."""
    v = Utf8Validator()
    valid, ends, _, _ = v.validate(bytes(data))
    return valid and ends


class ABClient(RawClient):
    """A RawClient whose frames come from autobahn's frame writer."""

    def __init__(self, port, **kw):
        super().__init__(port, **kw)
        self.framer = Framer()
        self.sent_ts = {}
        self.send_failed = None

    def send_raw(self, data, split=None, delay=0.0):
        """As RawClient's, but a server that has already failed the
        connection may reset it while the client still sends (as after
        a bad frame): the error is kept in .send_failed, and what the
        server said before is still read by the expect_*() calls."""
        try:
            super().send_raw(data, split, delay)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.send_failed = e

    def send_ab(self, opcode, payload=b"", fin=True, rsv=0,
                payload_len=None, chopsize=None, delay=None):
        """One frame written by autobahn; chopsize=n sends it n bytes per
        write (with a short pause for small chops, so that the server's
        reads really are cut)."""
        data, chop = self.framer.frame(opcode, payload, fin, rsv,
                                       payload_len, chopsize)
        if delay is None:
            delay = 0.0005 if chop and chop <= 16 and len(data) < 4096 \
                else 0.0
        self.send_raw(data, split=chop, delay=delay)

    def send_close_ab(self, code=None, reason=b"", **kw):
        self.send_ab(OP_CLOSE, close_payload(code, reason), **kw)

    # -- the echo of a binary-only server: Ping in, Pong out

    def send_echo(self, id, ts=None, size=None, **kw):
        """Send an im.Frame Ping{ts} with frame id `id` as one binary
        message (exactly `size` bytes if given); returns (id, ts)."""
        ts = id * 1000 + 7 if ts is None else ts
        data, ts = ping_payload(id, ts, size)
        self.sent_ts[id] = ts
        self.send_ab(OP_BINARY, data, **kw)
        return id, ts

    def expect_echo(self, id, ts=None, timeout=10):
        """The Pong for send_echo(id, ts)."""
        ts = self.sent_ts.get(id, id * 1000 + 7) if ts is None else ts
        f = self.recv_pb(timeout)
        assert body(f) == "pong" and f.id == id and f.pong.ts_ms == ts, \
            "expected Pong(id=%d, ts=%d), got %s" % (id, ts, f)

    def echo(self, id, ts=None, size=None, **kw):
        self.send_echo(id, ts, size, **kw)
        self.expect_echo(id, ts)

    def expect_error(self, id, code, timeout=10):
        f = self.recv_pb(timeout)
        assert body(f) == "error" and f.id == id \
            and f.error.code == error_code(code), \
            "expected Error(%s) for %d, got %s" % (code, id, f)
        return f

    def expect_pong(self, payload, timeout=10):
        assert self.recv_frame(timeout) == (True, OP_PONG, bytes(payload))

    def expect_nothing(self, timeout=0.3):
        """No frame arrives within `timeout` (the connection may close)."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 2 and not self.eof:
            try:
                if not self._fill(deadline):
                    break
            except AssertionError:
                break
        assert not self.buf, "unexpected data %r" % self.buf[:60]

    # -- closing

    def expect_close(self, code, timeout=10, reply=True,
                     skip=(OP_PING, OP_PONG, OP_BINARY)):
        """The server's close frame has `code` (None: empty); the client
        answers it (reply=True) and the server then drops TCP.  Frames
        before the close with an opcode in `skip` are in .skipped, any
        other is an AssertionError."""
        got, reason = self.recv_close(timeout, skip=skip)
        assert got == code, "close %s %r, expected %s" % (got, reason, code)
        assert utf8_valid(reason.encode()), "close reason is not UTF-8"
        if reply:
            try:
                self.send_close_ab(code if code else 1000)
            except OSError:
                pass
        assert self.wait_eof(10), "no TCP close after the closing handshake"
        return reason

    def expect_fail(self, code=1002, timeout=10):
        """Autobahn's "fail fast": the next frame from the server is its
        close with `code` (nothing sent after the bad frame is answered),
        then the connection goes."""
        return self.expect_close(code, timeout, skip=())

    def closing_handshake(self, code=1000, reason=b"", timeout=10):
        """Client-initiated close: the server echoes `code`, drops TCP."""
        self.send_close_ab(code, reason)
        got, _ = self.recv_close(timeout, skip=())
        assert got == code, "close %s, expected %s" % (got, code)
        assert self.wait_eof(10), "no TCP close after the closing handshake"


def ping_payload(id, ts, size=None):
    """The bytes of im.Frame{id, Ping{ts_ms}}; with `size`, exactly size
    bytes: ts_ms grows a varint byte at a time (ts keeps its low bits, so
    the Pong's ts is the returned one) and an unknown field (ignored by
    the server) takes the rest.  Returns (payload, ts)."""
    base = encode(frame(id=id, ping={"ts_ms": ts}))
    if size is None or size == len(base):
        return base, ts
    for extra in range(10):
        t = ts | (1 << (7 * extra)) if extra else ts
        data = encode(frame(id=id, ping={"ts_ms": t}))
        if len(data) == size:
            return data, t
        # an unknown length-delimited field 100 (tag a2 06) of padding
        for pad in range(max(0, size - len(data) - 3),
                         max(-1, size - len(data) - 8), -1):
            d = data + b"\xa2\x06" + _varint(pad) + b"p" * pad
            if len(d) == size:
                return d, t
    raise ValueError("no Ping of %d bytes" % size)


def _varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])

