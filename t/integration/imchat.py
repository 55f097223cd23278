"""Chat-level helpers of the messaging, auth-token and Redis-fault tests.

    Chat            an authenticated (or not yet) websockets client whose
                    frames are read by a background task and kept, so a
                    test can wait for replies by request id and look at
                    every Message it got, live or replayed
    login()         connect + Auth -> Chat (AuthOk checked)
    login_on()      login() until the session lands on a wanted worker
    session_pid()   the worker pid in an AuthOk session id
    RawChat         RawClient helpers: authenticate, read frames
    TcpProxy        a loopback TCP proxy that can refuse or cut its
                    connections (a Redis that one nginx cannot reach)
    xrange_ids()    msg_ids of a user's inbox, straight from Redis
    xrange_cursors()  its entry ids, the cursors
    first_sightings()  what a chat got from one sender, each msg_id once
    poll(), wait_for()  a condition polled until true or time is up
    StalledReader   a signed-in client that stops reading and fills its
                    session's send queue to a chosen byte count (from
                    the socket queues in /proc/net/tcp)

Every wait is bounded; nothing asserts that something was fast.
"""

import asyncio
import itertools
import socket
import threading
import time

import websockets

from imtest import (RawClient, body, decode, encode, error_code, frame,
                    ws_connect)


AUTH_OK_TIMEOUT = 10


def session_pid(session):
    """The worker pid of a session id "<host>:<pid>:<n>:<device>"."""
    host, pid, number, device = session.split(":")
    assert host and number.isdigit() and device, session
    return int(pid)


def inbox_key(user):
    return "im:{u:%s}:inbox" % user


def routes_key(user):
    return "im:{u:%s}:routes" % user


def cursor_key(user):
    return "im:{u:%s}:cursor" % user


def redis_cmd(redis, *args, timeout=10):
    """One command to redis over RESP; the parsed reply (bytes, int, list,
    None; an error reply raises RuntimeError)."""
    def command(args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    password = getattr(redis, "password", None)
    with socket.create_connection(("127.0.0.1", redis.port),
                                  timeout=timeout) as s:
        f = s.makefile("rb")
        if password:
            s.sendall(command(["AUTH", password]))
            _resp(f)
        s.sendall(command(args))
        return _resp(f)


def _resp(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RuntimeError("short reply from redis: %r" % line)
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if t == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_resp(f) for _ in range(n)]
    raise RuntimeError("bad reply from redis: %r" % line)


def xrange(redis, user):
    """[(msg_id, stored im.Message)] of user's inbox in stream order; the
    Message's cursor is set to its entry id (an entry of before cursors
    has no msg_id: its entry id is both)."""
    from imtest import load_pb
    out = []
    for eid, fields in redis_cmd(redis, "XRANGE", inbox_key(user), "-", "+"):
        kv = dict(zip(fields[0::2], fields[1::2]))
        m = load_pb().Message()
        m.ParseFromString(kv[b"m"])
        m.cursor = eid.decode()
        if not m.msg_id:
            m.msg_id = m.cursor
        out.append((m.msg_id, m))
    return out


def xrange_ids(redis, user):
    """The msg_ids of user's inbox in stream order."""
    return [i for i, _ in xrange(redis, user)]


def xrange_cursors(redis, user):
    """The entry ids (cursors) of user's inbox in stream order."""
    return [m.cursor for _, m in xrange(redis, user)]


def xlen(redis, user):
    return int(redis_cmd(redis, "XLEN", inbox_key(user)))


def is_msg_id(s):
    ms, sep, seq = s.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit()


def id_key(msg_id):
    """Sort key of a stream id "<ms>-<seq>"."""
    ms, _, seq = msg_id.partition("-")
    return int(ms), int(seq)


_ids = itertools.count(1)


def next_id():
    """A request id unique in this test process (never 0)."""
    return next(_ids)


class Chat:
    """A websockets connection whose frames a background task collects.

    .frames     every frame received, in order
    .messages   the Message bodies received (live or replay, id 0) or in
                reply to a Sync (id != 0), in order
    .closed     set once the connection is closed; .close_code then"""

    def __init__(self, ws):
        self.ws = ws
        self.frames = []
        self.by_id = {}
        self.session = None
        self.user = None
        self.closed = False
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url, **kw):
        ws = await ws_connect(url, **kw)
        return cls(ws)

    async def _read(self):
        try:
            async for data in self.ws:
                assert isinstance(data, bytes), data
                f = decode(data)
                self.frames.append(f)
                if f.id:
                    self.by_id.setdefault(f.id, []).append(f)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._changed.set()

    @property
    def close_code(self):
        return self.ws.close_code

    def live_messages(self):
        """Message bodies pushed with id 0 (live or replay after Auth)."""
        return [f.message for f in self.frames
                if body(f) == "message" and f.id == 0]

    def messages(self, id=0):
        """Message bodies of frames with request id `id`."""
        return [f.message for f in self.frames
                if body(f) == "message" and f.id == id]

    def errors(self):
        return [f for f in self.frames if body(f) == "error"]

    async def until(self, cond, timeout=10, what="condition"):
        """Wait until cond() is true (returned); AssertionError when the
        time is up or the connection closed first."""
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if self.closed:
                raise AssertionError("connection closed (code %s) while "
                                     "waiting for %s" % (self.close_code,
                                                         what))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out after %.1fs waiting for %s"
                                     % (timeout, what))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def wait_closed(self, timeout=10):
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open after %.1fs"
                                     % timeout)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def reply(self, id, timeout=10, what=None):
        """The first frame carrying request id `id`."""
        fs = await self.until(lambda: self.by_id.get(id), timeout,
                              what or "reply to request %d" % id)
        return fs[0]

    async def request(self, timeout=10, **body_):
        """Send a frame with a fresh id and return its (first) reply."""
        id = next_id()
        await self.ws.send(encode(frame(id=id, **body_)))
        return await self.reply(id, timeout)

    async def post(self, id=None, **body_):
        """Send a frame, wait for nothing; returns its id."""
        if id is None:
            id = next_id()
        await self.ws.send(encode(frame(id=id, **body_)))
        return id

    async def auth(self, token, device="", timeout=AUTH_OK_TIMEOUT):
        """Auth; returns the reply frame (AuthOk or Error)."""
        id = next_id()
        await self.ws.send(encode(frame(id=id, auth={"token": token,
                                                     "device": device})))
        f = await self.reply(id, timeout)
        if body(f) == "auth_ok":
            self.session = f.auth_ok.session
            self.user = f.auth_ok.user
        return f

    @property
    def pid(self):
        return session_pid(self.session)

    async def send(self, to, data, cmid="", type="", timeout=10):
        """Send a message and return the reply (a SendAck unless it failed)."""
        return await self.request(timeout, send={
            "to": to, "body": data, "client_msg_id": cmid, "type": type})

    async def send_ok(self, to, data, cmid="", type="", timeout=10):
        """send() that must be acknowledged: returns the SendAck body."""
        f = await self.send(to, data, cmid, type, timeout)
        assert body(f) == "send_ack", "Send to %s: %s" % (to, f)
        assert f.send_ack.client_msg_id == cmid, f
        return f.send_ack

    async def ping(self, ts=1, timeout=10):
        f = await self.request(timeout, ping={"ts_ms": ts})
        assert body(f) == "pong" and f.pong.ts_ms == ts, f
        return f

    async def ack(self, up_to):
        await self.post(ack={"up_to": up_to})

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except (asyncio.TimeoutError, websockets.WebSocketException, OSError):
            pass
        try:
            await asyncio.wait_for(self._reader, 5)
        except (asyncio.TimeoutError, Exception):
            self._reader.cancel()


async def login(n, user, device="", token=None, url=None, retry=0,
                **connect):
    """Connect to nginx n and authenticate as user; returns the Chat.
    retry: for that many seconds, an Auth refused with UNAVAILABLE (a
    worker whose Redis link is not back yet) is sent again; connect goes
    to websockets' connect (e.g. ssl=)."""
    c = await Chat.connect(url or n.url, **connect)
    deadline = time.monotonic() + retry
    while True:
        f = await c.auth(token or n.token(user), device)
        if (body(f) == "error"
                and f.error.code == error_code("UNAVAILABLE")
                and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
            continue
        break
    if body(f) != "auth_ok":
        await c.close()
        raise AssertionError("Auth as %s/%s failed: %s" % (user, device, f))
    assert f.auth_ok.user == user, f
    return c


async def login_on(n, user, device="", want=None, avoid=(), tries=80):
    """login() until the session's worker is `want` (a pid) or not in
    `avoid`; at most `tries` connections, the misses are closed."""
    for _ in range(tries):
        c = await login(n, user, device)
        if (want is None or c.pid == want) and c.pid not in avoid:
            return c
        await c.close()
    raise AssertionError("no session of %s on the wanted worker (want=%s "
                         "avoid=%s) in %d tries" % (user, want, avoid, tries))


async def close_all(chats):
    await asyncio.gather(*(c.close() for c in chats),
                         return_exceptions=True)


def first_sightings(chat, frm, field="msg_id"):
    """`field` (msg_id or body) of the messages from `frm` that chat got,
    each msg_id once, in the order first seen (a client dedups by
    msg_id)."""
    seen, out = set(), []
    for m in chat.live_messages():
        if getattr(m, "from") == frm and m.msg_id not in seen:
            seen.add(m.msg_id)
            out.append(getattr(m, field))
    return out


def poll(cond, timeout, interval=0.1):
    """Poll cond() until it is true or time is up; its last value (the
    caller asserts, with the details)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


async def wait_for(cond, timeout, interval=0.1):
    """poll() for coroutines."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        await asyncio.sleep(interval)


def check_messages(got, expect_bodies, sender=None, to=None):
    """got (Message bodies) holds exactly expect_bodies in that order, with
    strictly increasing cursors (inbox order)."""
    bodies = [m.body for m in got]
    assert bodies == list(expect_bodies), (
        "got %d messages %r..., expected %d %r..." % (
            len(bodies), bodies[:5], len(expect_bodies),
            list(expect_bodies)[:5]))
    keys = [id_key(m.cursor) for m in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), \
        [m.cursor for m in got]
    for m in got:
        if sender is not None:
            assert getattr(m, "from") == sender, m
        if to is not None:
            assert m.to == to, m


# --------------------------------------------------------------------------
# raw clients

class RawChat(RawClient):
    """A RawClient that upgrades and can authenticate."""

    def __init__(self, port, rcvbuf=None, **kw):
        super().__init__(port, **kw)
        if rcvbuf:
            # a small receive buffer, set before connect() so the window
            # is small from the start: a client that stops reading fills
            # up after a few kB rather than megabytes of loopback buffers
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(self.sock.gettimeout())
            s.connect(self.sock.getpeername())
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.close()
            self.sock = s
        self.upgrade()

    def auth(self, token, device="", id=None, timeout=AUTH_OK_TIMEOUT):
        """Send Auth; returns the first frame carrying its id."""
        id = id or next_id()
        self.send_pb(frame(id=id, auth={"token": token, "device": device}))
        return self.reply(id, timeout)

    def reply(self, id, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_pb(max(0.01, deadline - time.monotonic()))
            if f.id == id:
                return f

    def expect_error(self, id, code, timeout=10):
        f = self.reply(id, timeout)
        assert body(f) == "error", f
        assert f.error.code == error_code(code), f
        return f

    def ping_pong(self, ts=77):
        id = next_id()
        self.send_pb(frame(id=id, ping={"ts_ms": ts}))
        f = self.reply(id)
        assert body(f) == "pong" and f.pong.ts_ms == ts, f


def raw_auth(n, user, device="", port=None, **kw):
    """A RawChat signed in as user on nginx n (or its `port`): .session,
    .pid."""
    c = RawChat(port or n.port, **kw)
    f = c.auth(n.token(user), device)
    assert body(f) == "auth_ok", f
    c.session = f.auth_ok.session
    c.pid = session_pid(c.session)
    return c


# --------------------------------------------------------------------------
# a TCP proxy in front of Redis

class TcpProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:upstream_port while enabled;
    disabled, it closes what it accepts and cuts what it carries."""

    def __init__(self, upstream_port, port=None):
        from imtest import free_port
        self.upstream = upstream_port
        self.port = port or free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.enabled = True
        self._lock = threading.Lock()
        self._socks = set()
        self._stop = False
        self._ls = socket.socket()
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", self.port))
        self._ls.listen(64)
        self._ls.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop:
            try:
                s, _ = self._ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.enabled:
                s.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream),
                                             timeout=2)
            except OSError:
                s.close()
                continue
            with self._lock:
                self._socks.update((s, u))
            for a, b in ((s, u), (u, s)):
                threading.Thread(target=self._pump, args=(a, b),
                                 daemon=True).start()

    def _pump(self, a, b):
        a.settimeout(None)
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            self._kill(s)

    def _kill(self, s):
        with self._lock:
            self._socks.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def disable(self):
        """Refuse new connections and cut the open ones."""
        self.enabled = False
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._kill(s)

    def enable(self):
        self.enabled = True

    def close(self):
        self._stop = True
        self.disable()
        try:
            self._ls.close()
        except OSError:
            pass
        self._thread.join(2)


# --------------------------------------------------------------------------
# a client whose output piles up in its session's send queue

def tcp_queues(local_port, remote_port):
    """(tx_queue, rx_queue) of the loopback TCP socket local_port ->
    remote_port, from /proc/net/tcp: bytes sent and not acknowledged,
    bytes received and not read; None if there is no such socket."""
    want = ("0100007F:%04X" % local_port, "0100007F:%04X" % remote_port)
    with open("/proc/net/tcp") as fp:
        for line in fp.readlines()[1:]:
            f = line.split()
            if (f[1], f[2]) == want:
                tx, rx = f[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


class StalledReader:
    """A signed-in client that stops reading and sends WebSocket pings:
    their pongs pile up in the kernel's buffers, then in the session's
    send queue.  The pongs are all the output after AuthOk, so the bytes
    the session still holds are

        unsent = pong bytes made - the server socket's tx_queue
                                 - this socket's rx_queue

    (both from /proc/net/tcp), and a ping of the right size brings the
    queue to a byte count of our choosing.  The head of the queue is a
    2-byte pong, so at most 1 byte of what the queue counts is out:
    which one, the parity of the bytes sent tells (queued())."""

    def __init__(self, n, port, user="stalled"):
        self.port = port
        self.c = RawChat(port, rcvbuf=4096)
        f = self.c.auth(n.token(user))
        assert body(f) == "auth_ok", f
        self.c.session = f.auth_ok.session
        assert self.c.buf == b"", "output after AuthOk: %r" % self.c.buf
        self.cport = self.c.sock.getsockname()[1]
        self.made = 0

    def ping(self, size=0, count=1):
        from imtest import OP_PING, ws_frame
        self.c.send_raw(ws_frame(OP_PING, b"q" * size,
                                 mask_key=b"\0\0\0\0") * count)
        self.made += (2 + size) * count

    def unsent(self, timeout=10):
        """unsent once three readings 50 ms apart agree."""
        deadline = time.monotonic() + timeout
        last, same = None, 0
        while time.monotonic() < deadline:
            srv = tcp_queues(self.port, self.cport)
            cli = tcp_queues(self.cport, self.port)
            assert srv and cli, "the connection is gone"
            v = self.made - srv[0] - cli[1]
            same = same + 1 if v == last else 0
            if same >= 2:
                return v
            last = v
            time.sleep(0.05)
        raise AssertionError("the socket queues did not settle")

    def stall(self, most, rounds=50):
        """Pings until the session holds some output it cannot send;
        their pongs never exceed `most` bytes in the queue."""
        for _ in range(rounds):
            u = self.unsent()
            if u > 0:
                return u
            self.ping(0, max(1, min(most // 2, 5000)))
        raise AssertionError("the session's output never stalled")

    def queued(self):
        """What the session's queue counts (im_send_queue is checked
        against it): unsent bytes, plus the byte of a 2-byte pong at its
        head that is already out, if one is (all the pongs that went out
        are 2 bytes, so an odd count means half of one went).  Only
        valid while the pongs not of 2 bytes are all still queued."""
        u = self.unsent()
        return u + (self.made - u) % 2

    def fill_queue_to(self, target):
        """Bring queued() to exactly target bytes (2 bytes of 2-byte
        pongs stay ahead of the rest)."""
        u = self.stall(target // 2)
        assert u < target - 130, (u, target)
        head = (self.made - u) % 2
        self.fill_to(target - head)
        q = self.queued()
        assert q == target, (q, target)
        return q

    def fill_to(self, target, rounds=200):
        """Bring the session's unsent output to exactly target bytes."""
        for _ in range(rounds):
            u = self.unsent()
            room = target - u
            assert room >= 0, (u, target)
            if u > 0 and room == 0:
                return u
            if u > 0 and room <= 127:
                # one pong of exactly the missing size (2..127 bytes)
                assert room >= 2, "1 byte short: %d of %d" % (u, target)
                self.ping(room - 2)
                continue
            # empty pings: 2-byte pongs, never past the target
            self.ping(0, max(1, min((room - 128) // 2, 2000)))
        raise AssertionError("could not fill the send queue to %d bytes "
                             "(at %d)" % (target, self.unsent()))
