"""A raw asyncio WebSocket client for the chaos run: it can send anything
(every byte string, split at any boundary, with pauses), stop reading,
close in the middle of a frame or reset the connection.

    RawWs(rng, port)        not connected yet
      .open(rcvbuf=None)    TCP connect (a small SO_RCVBUF if given)
      .write(data, split)   send bytes; split=True cuts them at random
                            boundaries (rng) with short pauses between
      .request(...)         the bytes of an upgrade request
      .handshake(...)       request (+ bytes behind it), read the answer
      .start_reader()       a task collecting server frames (pings are
                            answered unless answer_pings=False)
      .wait_frames(pred)    wait (bounded) until pred(self) is true
      .pbs()                the im.Frames received so far
      .close() / .abort()   FIN / RST

Every wait is bounded by a timeout; nothing here loops forever."""

import asyncio
import base64
import hashlib
import os
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import imtest  # noqa: E402

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Closed(Exception):
    pass


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()
                            ).decode()


def cut_points(rng, n, most=6):
    """Random cut offsets of an n-byte write (sorted, in 1..n-1)."""
    if n < 2:
        return []
    k = rng.randint(1, min(most, n - 1))
    return sorted(rng.sample(range(1, n), k)) if n - 1 >= k else []


class RawWs:
    def __init__(self, rng, port, host="127.0.0.1"):
        self.rng = rng
        self.host = host
        self.port = port
        self.reader = None
        self.writer = None
        self.sock = None
        self.buf = b""
        self.frames = []            # (fin, opcode, payload) as received
        self.eof = False
        self.close_frame = None     # payload of the server's close frame
        self.answer_pings = True
        self.on_frame = None        # called with (fin, opcode, payload)
        self._task = None
        self._changed = asyncio.Event()
        self.key = None
        self.status = None
        self.response = b""
        self.bytes_sent = 0

    # -- connection

    async def open(self, rcvbuf=None, timeout=5):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(s, (self.host,
                                                         self.port)),
                                   timeout)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.reader, self.writer = await asyncio.open_connection(sock=s)
        return self

    async def write(self, data, split=False, pause=None):
        """Send bytes; split=True: in pieces cut at random boundaries,
        with a short random pause (or `pause` seconds) between them."""
        if self.writer is None:
            raise Closed("not connected")
        data = bytes(data)
        cuts = cut_points(self.rng, len(data)) if split else []
        start = 0
        for c in cuts + [len(data)]:
            piece = data[start:c]
            start = c
            if not piece:
                continue
            try:
                self.writer.write(piece)
                await asyncio.wait_for(self.writer.drain(), 10)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                raise Closed("write: %r" % e) from None
            self.bytes_sent += len(piece)
            if c != len(data):
                d = pause if pause is not None else self.rng.choice(
                    (0, 0, 0.001, 0.003, 0.02))
                if d:
                    await asyncio.sleep(d)

    def request(self, path="/", headers=None, pad_to=None, method="GET",
                version="HTTP/1.1", extra=()):
        """Bytes of an upgrade request; pad_to=N adds an X-Pad header so
        that the request, up to and including the empty line, is exactly N
        bytes."""
        self.key = base64.b64encode(bytes(self.rng.getrandbits(8)
                                          for _ in range(16))).decode()
        h = [("Host", "%s:%d" % (self.host, self.port)),
             ("Upgrade", "websocket"), ("Connection", "Upgrade"),
             ("Sec-WebSocket-Key", self.key),
             ("Sec-WebSocket-Version", "13"),
             ("Sec-WebSocket-Protocol", "im.v1")]
        if headers is not None:
            h = list(headers)
        h += list(extra)

        def build(hs):
            lines = ["%s %s %s" % (method, path, version)]
            lines += ["%s: %s" % kv for kv in hs]
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        req = build(h)
        if pad_to is not None:
            base = len(build(h + [("X-Pad", "")]))
            n = pad_to - base
            if n < 0:
                raise ValueError("request already %d bytes" % base)
            req = build(h + [("X-Pad", "p" * n)])
            assert len(req) == pad_to, (len(req), pad_to)
        return req

    async def handshake(self, req=None, behind=b"", split=False,
                        first=None, timeout=5, **kw):
        """Send an upgrade request (split at random if asked; first=k sends
        the first k bytes alone, then a pause, then the rest with `behind`
        in one write) and read the response head: the status (None if
        the server closed without one)."""
        if req is None:
            req = self.request(**kw)
        if first:
            await self.write(req[:first], split=split)
            await asyncio.sleep(self.rng.uniform(0.03, 0.08))
            await self.write(req[first:] + behind)
        else:
            await self.write(req + behind, split=split)
        return await self.read_response(timeout)

    async def read_response(self, timeout=5):
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise Closed("response head too long")
            if not await self._fill(deadline):
                self.status = None
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.response = head
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            raise Closed("bad status line %r" % line) from None
        if self.status == 101:
            want = ws_accept(self.key) if self.key else None
            if want and ("sec-websocket-accept: " + want).lower().encode() \
                    not in head.lower():
                raise Closed("bad Sec-WebSocket-Accept in %r" % head)
        return self.status

    async def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        try:
            data = await asyncio.wait_for(self.reader.read(65536), left)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    # -- frames

    def frame(self, opcode, payload=b"", **kw):
        kw.setdefault("mask_key", bytes(self.rng.getrandbits(8)
                                        for _ in range(4)))
        return imtest.ws_frame(opcode, payload, **kw)

    def pb(self, id=0, **body):
        return imtest.encode(imtest.frame(id=id, **body))

    def binary(self, data, **kw):
        return self.frame(OP_BINARY, data, **kw)

    def _parse(self):
        """Frames complete in buf -> self.frames."""
        out = []
        while True:
            b = self.buf
            if len(b) < 2:
                break
            n, off = b[1] & 0x7F, 2
            if n == 126:
                if len(b) < 4:
                    break
                n, off = struct.unpack("!H", b[2:4])[0], 4
            elif n == 127:
                if len(b) < 10:
                    break
                n, off = struct.unpack("!Q", b[2:10])[0], 10
            if len(b) < off + n:
                break
            out.append((bool(b[0] & 0x80), b[0] & 0x0F, b[off:off + n]))
            self.buf = b[off + n:]
        return out

    def start_reader(self, answer_pings=True):
        self.answer_pings = answer_pings
        if self._task is None:
            self._task = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        try:
            for f in self._parse():
                await self._got(f)
            while not self.eof:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    self.eof = True
                    break
                self.buf += data
                for f in self._parse():
                    await self._got(f)
        except asyncio.CancelledError:
            pass
        finally:
            self.eof = True
            self._changed.set()

    async def _got(self, f):
        fin, op, payload = f
        if self.on_frame is not None:
            self.on_frame(f)
        else:
            self.frames.append(f)
        if op == OP_CLOSE and self.close_frame is None:
            self.close_frame = payload
        if op == OP_PING and self.answer_pings and self.close_frame is None:
            try:
                await self.write(self.frame(OP_PONG, payload))
            except Closed:
                pass
        self._changed.set()

    async def wait_frames(self, pred, timeout):
        """Wait until pred(self) is true or the connection ended or the
        time is up; pred's last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred(self)
            if v or self.eof:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                return v
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    def pbs(self):
        out = []
        for fin, op, payload in self.frames:
            if op == OP_BINARY:
                try:
                    out.append(imtest.decode(payload))
                except Exception:
                    out.append(None)
        return out

    def replies(self, id):
        return [f for f in self.pbs() if f is not None and f.id == id]

    def close_code(self):
        p = self.close_frame
        if p is None:
            return None
        if len(p) < 2:
            return 0
        return struct.unpack("!H", p[:2])[0]

    async def wait_eof(self, timeout):
        await self.wait_frames(lambda s: s.eof, timeout)
        return self.eof

    # -- ending

    def abort(self):
        """Reset the connection (SO_LINGER 0)."""
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close()

    def close(self):
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.writer is not None:
            try:
                self.writer.transport.abort() if self._lingering() else \
                    self.writer.close()
            except Exception:
                pass
            self.writer = None
        self.eof = True

    def _lingering(self):
        try:
            v = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)
            return struct.unpack("ii", v)[0] == 1
        except (OSError, AttributeError):
            return False
