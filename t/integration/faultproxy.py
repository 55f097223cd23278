"""A Redis fault proxy for the tests: a loopback TCP proxy in front of a
redis-server that nginx's im_redis points at, and that a test (or the
chaos run) drives to cut, refuse or slow down the links.

    from faultproxy import FaultProxy

    p = FaultProxy(redis.port)          # listening on 127.0.0.1 at once
    n = nginx(redis_addr=p.addr)        # im_redis 127.0.0.1:<p.port>
    ...
    p.close()

API (every method may be called from any thread, also from inside a
running asyncio loop of the test; none blocks for long):

    FaultProxy(upstream_port, port=None)
        Listens on 127.0.0.1:port (a fresh free port if None) and forwards
        each accepted connection to 127.0.0.1:upstream_port.  The proxy
        runs its own asyncio loop in one daemon thread; the constructor
        returns once the port accepts connections.

    .port               the listening port
    .addr               "127.0.0.1:<port>", for im_redis
    .upstream_port      the redis-server's port

    .links(kind=None) -> list of Link
        The live links (both sides connected), oldest first; with kind,
        only those of that kind.  A Link has:
            .id         a number, unique in this proxy (1, 2, ...)
            .kind       None until the client's first command has been
                        read, then "sub" if it is SUBSCRIBE, PSUBSCRIBE or
                        SSUBSCRIBE and "cmd" for anything else
            .peer       the client's (host, port)
            .bytes_up   bytes client -> redis forwarded so far
            .bytes_down bytes redis -> client forwarded so far
            .cut()      close this link at once, both sides
            .closed     True once the link is gone

    .cut(kind=None) -> int
        Closes the live links (of that kind; None: all of them) at once,
        both sides; bytes held by delay() are dropped.  Returns how many
        were cut.  A link whose kind is not known yet is cut only by
        cut(None).

    .refuse(seconds=None)
        From now on new connections are accepted and closed at once (the
        client sees EOF), for `seconds` (None: until allow()).  Live links
        are not touched: cut() them for a full outage.
    .allow()
        Ends refuse().

    .delay(kind, seconds)
        From now on, the bytes redis -> client on links of that kind (live
        ones and new ones) are each held `seconds` after they arrived from
        redis before they are forwarded; order is kept.  delay(kind, 0)
        ends it (what is held goes out at once).  Bytes client -> redis
        are never held.  kind is "cmd" or "sub".

    .blackhole(kind, on=True)
        From now on, until blackhole(kind, False), the bytes in both
        directions on links of that kind (live ones and new ones) are
        silently discarded: nothing is forwarded, nothing is closed, as
        when a NAT or firewall on the way forgot the flow.  A new link is
        classified by its first bytes as usual (those are discarded too
        once its kind is blackholed).  A close by either side still ends
        the link.  What was discarded is gone: a link that lives on past
        blackhole(kind, False) has a torn byte stream, so the switch is
        meant for links the client is expected to give up on.  Bytes held
        by delay() are discarded when they are due.  kind is "cmd" or
        "sub".

    .stats() -> dict of counts:
            accepted        connections accepted (refused ones included)
            refused         closed at once because of refuse()
            upstream_failed closed at once because redis did not accept
            cut             links closed by cut() / Link.cut()
            closed          links that ended otherwise (either side closed)
            live            links open now
            bytes_up        bytes forwarded client -> redis
            bytes_down      bytes forwarded redis -> client
            held            bytes held by delay() right now
            discarded       bytes dropped by blackhole(), both ways

    .close()
        Stops listening and closes every link; the thread ends within a
        second or two.  Idempotent.  Also a context manager.
"""

import asyncio
import collections
import errno
import socket
import threading
import time


SUB_COMMANDS = (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE")
KINDS = ("cmd", "sub")
READ_SIZE = 65536
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 5.0
CLASSIFY_MAX = 4096     # bytes looked at to find the first command's name


def first_command(data):
    """The upper-cased name of the first command in RESP (or inline)
    bytes, None if more bytes are needed, b"" if it cannot be told."""
    if not data:
        return None
    if data[:1] == b"*":
        nl = data.find(b"\r\n")
        if nl < 0:
            return None if len(data) < 32 else b""
        if data.find(b"$", nl + 2, nl + 3) != nl + 2:
            return None if len(data) < nl + 3 else b""
        nl2 = data.find(b"\r\n", nl + 2)
        if nl2 < 0:
            return None if len(data) < nl + 32 else b""
        try:
            n = int(data[nl + 3:nl2])
        except ValueError:
            return b""
        if n < 0 or n > 64:
            return b""
        start = nl2 + 2
        if len(data) < start + n:
            return None
        return data[start:start + n].upper()
    nl = data.find(b"\n")
    if nl < 0:
        return None if len(data) < 64 else b""
    words = data[:nl].split()
    return words[0].upper() if words else b""


class Link:
    """One proxied connection (see the module docstring)."""

    def __init__(self, proxy, id, peer):
        self._proxy = proxy
        self.id = id
        self.peer = peer
        self.kind = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed = False
        self.opened = time.monotonic()
        self._c_writer = None       # to the client
        self._u_writer = None       # to redis
        self._held = collections.deque()    # (arrival, bytes) to client
        self._held_bytes = 0
        self._wake = asyncio.Event()
        self._tasks = []
        self._head = b""            # the client's first bytes

    def __repr__(self):
        return "<Link %d %s %s%s>" % (self.id, self.kind, self.peer,
                                      " closed" if self.closed else "")

    def cut(self):
        """Close this link at once, both sides."""
        return self._proxy._call(self._proxy._cut_links, [self]) > 0

    # -- in the proxy's loop

    def _abort(self):
        for w in (self._c_writer, self._u_writer):
            if w is not None:
                try:
                    w.transport.abort()
                except Exception:
                    pass
        self._held.clear()
        self._proxy._held_total -= self._held_bytes
        self._held_bytes = 0
        try:
            current = asyncio.current_task()
        except RuntimeError:
            current = None
        for t in self._tasks:
            if t is not current:
                t.cancel()
        self._wake.set()


class FaultProxy:
    """A loopback TCP proxy in front of a redis-server, for nginx's im_redis.
    Each accepted connection is a Link; its kind is "sub" once the client's
    first command is SUBSCRIBE/PSUBSCRIBE, else "cmd" (classified from the
    first bytes the client sends).  See the module docstring for the API."""

    def __init__(self, upstream_port, port=None):
        self.upstream_port = int(upstream_port)
        self._links = {}            # id -> Link, live ones
        self._next_id = 1
        self._refuse_until = 0.0    # monotonic; float("inf") = until allow
        self._delays = {k: 0.0 for k in KINDS}
        self._blackholes = {k: False for k in KINDS}
        self._counts = collections.Counter()
        self._held_total = 0
        self._closed = False
        self._lock = threading.Lock()

        self._ls = self._listen(port)
        self.port = self._ls.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port

        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failed = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="faultproxy:%d" % self.port)
        self._thread.start()
        if not self._ready.wait(CALL_TIMEOUT) or self._failed:
            self.close()
            raise RuntimeError("fault proxy did not start: %r"
                               % (self._failed,))

    @staticmethod
    def _listen(port):
        try:
            import imtest
        except ImportError:
            imtest = None
        last = None
        for _ in range(20):
            p = port
            if p is None and imtest is not None:
                p = imtest.free_port()
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p or 0))
            except OSError as e:
                s.close()
                last = e
                if port is not None or e.errno != errno.EADDRINUSE:
                    raise
                continue
            s.listen(512)
            s.setblocking(False)
            if imtest is not None:
                imtest._given_ports.add(s.getsockname()[1])
            return s
        raise last

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<FaultProxy %s -> %d>" % (self.addr, self.upstream_port)

    # -- the loop thread

    def _run(self):
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accepted, sock=self._ls))
        except Exception as e:     # pragma: no cover
            self._failed = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            try:
                self._loop.run_until_complete(self._shutdown())
            finally:
                self._loop.close()

    async def _shutdown(self):
        """Stop listening, cut every link, let the tasks end."""
        srv = getattr(self, "_server", None)
        if srv is not None:
            srv.close()
        self._cut_links(self._select(None))
        pending = [t for t in asyncio.all_tasks()
                   if t is not asyncio.current_task() and not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
        # the aborted transports close their sockets in callbacks
        await asyncio.sleep(0.05)

    def _call(self, fn, *args):
        """Run fn(*args) in the proxy's loop; its result."""
        if self._closed:
            return fn(*args) if threading.current_thread() is \
                self._thread else 0
        if threading.current_thread() is self._thread:
            return fn(*args)
        fut = asyncio.run_coroutine_threadsafe(self._wrap(fn, *args),
                                               self._loop)
        return fut.result(CALL_TIMEOUT)

    @staticmethod
    async def _wrap(fn, *args):
        r = fn(*args)
        # aborted transports close their sockets in call_soon callbacks:
        # let them run, so that a cut is done when cut() returns
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return r

    def _refusing(self):
        return time.monotonic() < self._refuse_until

    async def _accepted(self, c_reader, c_writer):
        self._counts["accepted"] += 1
        peer = c_writer.get_extra_info("peername")
        if self._closed or self._refusing():
            self._counts["refused"] += 1
            c_writer.transport.abort()
            return
        try:
            u_reader, u_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream_port),
                CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            self._counts["upstream_failed"] += 1
            c_writer.transport.abort()
            return
        if self._closed or self._refusing():
            # refuse() came while connecting upstream
            self._counts["refused"] += 1
            c_writer.transport.abort()
            u_writer.transport.abort()
            return
        for w in (c_writer, u_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
        link = Link(self, self._next_id, peer)
        self._next_id += 1
        link._c_writer = c_writer
        link._u_writer = u_writer
        with self._lock:
            self._links[link.id] = link
        link._tasks = [
            asyncio.ensure_future(self._pump_up(link, c_reader, u_writer)),
            asyncio.ensure_future(self._pump_down(link, u_reader)),
            asyncio.ensure_future(self._forward_down(link, c_writer)),
        ]

    def _end(self, link, how):
        """The link is over (how: "cut" or "closed")."""
        if link.closed:
            return
        link.closed = True
        with self._lock:
            self._links.pop(link.id, None)
        self._counts[how] += 1
        link._abort()

    async def _pump_up(self, link, reader, writer):
        """client -> redis, never held; classifies the link."""
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if link.kind is None:
                    link._head += data
                    name = first_command(link._head[:CLASSIFY_MAX])
                    if name is not None or len(link._head) >= CLASSIFY_MAX:
                        link.kind = "sub" if name in SUB_COMMANDS else "cmd"
                        link._head = b""
                        link._wake.set()
                if self._blackholed(link):
                    self._counts["discarded"] += len(data)
                    continue
                writer.write(data)
                link.bytes_up += len(data)
                self._counts["bytes_up"] += len(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        self._end(link, "closed")

    async def _pump_down(self, link, reader):
        """redis -> the held queue of the link."""
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if self._blackholed(link):
                    self._counts["discarded"] += len(data)
                    continue
                link._held.append((time.monotonic(), data))
                link._held_bytes += len(data)
                self._held_total += len(data)
                link._wake.set()
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        # what redis sent before it closed still goes out, then the end
        link._held.append((time.monotonic(), None))
        link._wake.set()

    def _blackholed(self, link):
        return link.kind is not None and self._blackholes.get(link.kind)

    def _delay_of(self, link):
        return self._delays.get(link.kind, 0.0) if link.kind else 0.0

    async def _forward_down(self, link, writer):
        """The held queue -> the client, each chunk `delay` after its
        arrival, in order."""
        try:
            while not link.closed:
                if not link._held:
                    link._wake.clear()
                    await link._wake.wait()
                    continue
                arrival, data = link._held[0]
                wait = arrival + self._delay_of(link) - time.monotonic()
                if wait > 0:
                    # delay() or cut() may change things meanwhile
                    link._wake.clear()
                    try:
                        await asyncio.wait_for(link._wake.wait(),
                                               min(wait, 0.5))
                    except asyncio.TimeoutError:
                        pass
                    continue
                link._held.popleft()
                if data is None:
                    break
                link._held_bytes -= len(data)
                self._held_total -= len(data)
                if self._blackholed(link):
                    self._counts["discarded"] += len(data)
                    continue
                writer.write(data)
                link.bytes_down += len(data)
                self._counts["bytes_down"] += len(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        except asyncio.CancelledError:
            return
        self._end(link, "closed")

    def _cut_links(self, links):
        n = 0
        for link in links:
            if not link.closed:
                self._end(link, "cut")
                n += 1
        return n

    def _select(self, kind):
        with self._lock:
            links = sorted(self._links.values(), key=lambda l: l.id)
        if kind is not None:
            links = [l for l in links if l.kind == kind]
        return links

    def _wake_all(self):
        for link in self._select(None):
            link._wake.set()

    # -- the API

    def links(self, kind=None):
        """The live links (of that kind), oldest first."""
        if kind is not None and kind not in KINDS:
            raise ValueError("kind is 'cmd' or 'sub', not %r" % (kind,))
        return self._select(kind)

    def cut(self, kind=None):
        """Close the live links (of that kind) at once, both sides; how
        many were cut."""
        if kind is not None and kind not in KINDS:
            raise ValueError("kind is 'cmd' or 'sub', not %r" % (kind,))
        return self._call(lambda: self._cut_links(self._select(kind)))

    def refuse(self, seconds=None):
        """New connections are accepted and closed at once, for `seconds`
        (None: until allow())."""
        self._refuse_until = (float("inf") if seconds is None
                              else time.monotonic() + float(seconds))

    def allow(self):
        """New connections are forwarded again."""
        self._refuse_until = 0.0

    def delay(self, kind, seconds):
        """Hold bytes redis -> client on links of `kind` for `seconds`
        each, from now on; 0 ends it."""
        if kind not in KINDS:
            raise ValueError("kind is 'cmd' or 'sub', not %r" % (kind,))
        if seconds < 0:
            raise ValueError("a delay is not negative")
        self._delays[kind] = float(seconds)
        if not self._closed:
            self._loop.call_soon_threadsafe(self._wake_all)

    def blackhole(self, kind, on=True):
        """Silently discard the bytes both ways on links of `kind` (live
        and new ones), from now on until blackhole(kind, False)."""
        if kind not in KINDS:
            raise ValueError("kind is 'cmd' or 'sub', not %r" % (kind,))
        self._blackholes[kind] = bool(on)

    def stats(self):
        """Counts: accepted, refused, upstream_failed, cut, closed, live,
        bytes_up, bytes_down, held, discarded."""
        out = {k: self._counts.get(k, 0)
               for k in ("accepted", "refused", "upstream_failed", "cut",
                         "closed", "bytes_up", "bytes_down", "discarded")}
        with self._lock:
            out["live"] = len(self._links)
        out["held"] = self._held_total
        return out

    def close(self):
        """Stop listening, close every link, end the thread."""
        if self._closed:
            return
        self._closed = True
        loop = getattr(self, "_loop", None)
        thread = getattr(self, "_thread", None)
        if loop is not None and thread is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
            if thread is not threading.current_thread():
                thread.join(3)
        try:
            self._ls.close()
        except OSError:
            pass
