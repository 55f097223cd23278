"""The chatting workload of the fault tests, and a few process helpers.

    ChatLoad        pairs of users chatting over real WebSockets like a
                    careful app does: Goaway -> reconnect after
                    reconnect_after_ms; any close -> reconnect after a short
                    delay; re-Auth with the same device; dedup by msg_id;
                    Ack what was seen; a Send that got an Error or no
                    SendAck is sent again with the SAME client_msg_id.
                    It keeps the books (sent, acked, delivered, duplicates,
                    reconnects) and checks them at the end: .finish()
                    returns a LoadReport.
    Bystander       a user who pings and chats with a friend next to an
                    offender, and must notice nothing
    fd_count(), process_children(), redis_keys(), routes_of(),
    stop_and_check_log(): process and Redis probes

Every loop is bounded in count and time; nothing asserts that something
was fast, only that it happened within a generous bound.
"""

import asyncio
import collections
import os
import random
import re
import statistics
import time

import websockets

from imtest import (body, decode, encode, error_code, frame, process_children,
                    ws_connect)
from imchat import id_key, login, next_id, redis_cmd, routes_key


SEND_TIMEOUT = 10       # a Send without a reply this long: reconnect
AUTH_TIMEOUT = 10
CLOSED_DELAY = (0.1, 0.3)   # reconnect after a close (random in range)
UNAVAILABLE_DELAY = 0.2
ACK_EVERY = 0.25


def sender_of(m):
    return getattr(m, "from")


def _stats(xs, scale=1000.0):
    """min/median/p95/max of xs (seconds -> ms by default), as text."""
    if not xs:
        return "none"
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return "min %.0f median %.0f p95 %.0f max %.0f ms" % (
        s[0] * scale, statistics.median(s) * scale, p95 * scale,
        s[-1] * scale)


async def _wait_event(ev, timeout):
    if timeout <= 0:
        return ev.is_set()
    try:
        await asyncio.wait_for(ev.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    return ev.is_set()


class _Conn:
    """One WebSocket connection of a ChatClient."""

    def __init__(self, ws):
        self.ws = ws
        self.waiting = {}       # request id -> future of the reply
        self.sends = {}         # request id -> client_msg_id
        self.goaway_at = None   # monotonic time to leave at
        self.closed = False
        self.wake = asyncio.Event()
        self.last_key = None    # newest msg_id seen on this connection
        self.session = None
        self.reader = None
        self.close_code = None
        self.timed_out = False  # a request got no reply in time
        self.broken = False     # sending failed: the connection is gone


class ChatClient:
    """One user of a pair: sends to its peer, receives from it."""

    def __init__(self, load, user, peer, device):
        self.load = load
        self.user = user
        self.peer = peer
        self.device = device
        self.token = load.n.token(user, exp=3600)
        self.url = load.url                     # another node's: set it
        self.seq = 0
        self.sent = {}                          # cmid -> body
        self.acks = collections.defaultdict(set)  # cmid -> {msg_id}
        self.pending = collections.deque()      # cmids to (re)send
        self.attempts = 0
        self.send_errors = collections.Counter()  # Error code name on Send
        self.error_times = []                   # monotonic time of each
        self.ack_times = []                     # monotonic time of each
        self.no_reply = 0                       # Sends lost with a session
        self.unexpected = []
        self.got = {}                           # msg_id -> Message of peer
        self.raw = collections.Counter()        # msg_id -> copies received
        self.own = set()                        # own messages replayed
        self.order_violations = []
        self.mismatches = []
        self.sessions = []                      # AuthOk session ids
        self.reconnect_times = []               # s from leaving to AuthOk
        self.leave_reasons = collections.Counter()
        self.close_codes = collections.Counter()
        self.goaways = []                       # reconnect_after_ms
        self.connect_failures = collections.Counter()
        self.cursor = None                      # newest msg_id seen (key)
        self.cursor_id = None
        self.acked_cursor = None
        self.last_ack = 0.0
        self.conn = None
        self.connected = asyncio.Event()

    # -- bookkeeping

    @property
    def sending_done(self):
        return (not self.pending
                and (self.load.stopping.is_set()
                     or self.seq >= self.load.max_msgs)
                and all(self.acks.get(c) for c in self.sent))

    def acked(self):
        """{cmid: msg_id} of the acknowledged messages."""
        return {c: min(ids, key=id_key) for c, ids in self.acks.items()
                if ids}

    def _next_cmid(self):
        if self.pending:
            return self.pending.popleft()
        if self.load.stopping.is_set() or self.seq >= self.load.max_msgs:
            return None
        cmid = "%s-%d" % (self.user, self.seq)
        self.sent[cmid] = b"%s>%s #%d" % (self.user.encode(),
                                          self.peer.encode(), self.seq)
        self.seq += 1
        return cmid

    # -- the life of the client

    async def run(self):
        left_at = None
        load = self.load
        while not load.shutdown.is_set() and time.monotonic() < load.deadline:
            conn = await self._connect()
            if conn is None:
                await asyncio.sleep(random.uniform(*CLOSED_DELAY))
                continue
            if left_at is not None:
                self.reconnect_times.append(time.monotonic() - left_at)
            self.conn = conn
            self.connected.set()
            reason = await self._serve(conn)
            left_at = time.monotonic()
            self.leave_reasons[reason] += 1
            await self._close(conn)
            self.conn = None
            if reason == "shutdown":
                break
            if reason == "goaway":
                # not before reconnect_after_ms, as the server asked
                await asyncio.sleep(max(0.0, conn.goaway_at
                                        - time.monotonic()))
            else:
                await asyncio.sleep(random.uniform(*CLOSED_DELAY))
        if self.conn is not None:
            await self._close(self.conn)

    async def _connect(self):
        try:
            ws = await ws_connect(self.url, open_timeout=5,
                                  close_timeout=2)
        except (OSError, asyncio.TimeoutError,
                websockets.WebSocketException) as e:
            self.connect_failures["connect: %s" % type(e).__name__] += 1
            return None
        conn = _Conn(ws)
        conn.reader = asyncio.ensure_future(self._read(conn))
        deadline = time.monotonic() + AUTH_TIMEOUT
        while True:
            f = await self._request(conn, AUTH_TIMEOUT, auth={
                "token": self.token, "device": self.device})
            if f is None:
                self.connect_failures["auth: no reply"] += 1
                await self._close(conn)
                return None
            if body(f) == "auth_ok":
                conn.session = f.auth_ok.session
                self.sessions.append(conn.session)
                return conn
            if (body(f) == "error"
                    and f.error.code == error_code("UNAVAILABLE")
                    and time.monotonic() < deadline):
                self.connect_failures["auth: UNAVAILABLE"] += 1
                await asyncio.sleep(UNAVAILABLE_DELAY)
                continue
            self.unexpected.append("Auth answered %s" % f)
            await self._close(conn)
            return None

    async def _close(self, conn):
        try:
            await asyncio.wait_for(conn.ws.close(), 5)
        except (asyncio.TimeoutError, websockets.WebSocketException,
                OSError):
            pass
        if conn.reader is not None:
            try:
                await asyncio.wait_for(conn.reader, 5)
            except (asyncio.TimeoutError, Exception):
                conn.reader.cancel()

    async def _request(self, conn, timeout, **body_):
        """Send a frame with a fresh id; its reply, or None when the
        connection closed or nothing came within `timeout`."""
        if conn.closed:
            return None
        id = next_id()
        fut = asyncio.get_running_loop().create_future()
        conn.waiting[id] = fut
        if "send" in body_:
            conn.sends[id] = body_["send"]["client_msg_id"]
        try:
            await conn.ws.send(encode(frame(id=id, **body_)))
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.timed_out = True
            return None
        except (websockets.ConnectionClosed, OSError):
            conn.broken = True
            return None
        finally:
            conn.waiting.pop(id, None)

    async def _read(self, conn):
        try:
            async for data in conn.ws:
                if not isinstance(data, bytes):
                    self.unexpected.append("text message %r" % data[:80])
                    continue
                f = decode(data)
                b = body(f)
                if b == "send_ack" and f.id in conn.sends:
                    # late or not, an ack says the message is stored
                    cmid = conn.sends[f.id]
                    if f.send_ack.client_msg_id != cmid:
                        self.mismatches.append("SendAck for %s says %s" % (
                            cmid, f.send_ack.client_msg_id))
                    self.acks[cmid].add(f.send_ack.msg_id)
                if f.id:
                    fut = conn.waiting.pop(f.id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(f)
                    elif b not in ("send_ack", "error"):
                        self.unexpected.append("unasked reply %s" % f)
                    continue
                if b == "message":
                    self._message(conn, f.message)
                elif b == "goaway":
                    ms = f.goaway.reconnect_after_ms
                    self.goaways.append(ms)
                    if conn.goaway_at is None:
                        conn.goaway_at = time.monotonic() + ms / 1000.0
                    conn.wake.set()
                else:
                    self.unexpected.append("push %s" % f)
        except websockets.ConnectionClosed:
            pass
        except Exception as e:     # a bug here must show, not hang
            self.unexpected.append("reader: %r" % e)
        finally:
            conn.closed = True
            conn.close_code = conn.ws.close_code
            self.close_codes[conn.close_code] += 1
            for fut in conn.waiting.values():
                if not fut.done():
                    fut.set_result(None)
            conn.wake.set()

    def _message(self, conn, m):
        # inbox order is cursor order (msg_ids of two senders need not be)
        cur = m.cursor or m.msg_id
        key = id_key(cur)
        if conn.last_key is not None and key <= conn.last_key:
            self.order_violations.append((conn.session, cur))
        conn.last_key = key if conn.last_key is None else max(key,
                                                              conn.last_key)
        self.raw[m.msg_id] += 1
        if self.cursor is None or key > self.cursor:
            self.cursor = key
            self.cursor_id = cur
        if sender_of(m) == self.user:
            self.own.add(m.msg_id)
            return
        if sender_of(m) != self.peer or m.to != self.user:
            self.mismatches.append("unexpected message %s" % m)
            return
        prev = self.got.setdefault(m.msg_id, m)
        if prev.body != m.body or prev.client_msg_id != m.client_msg_id:
            self.mismatches.append("msg_id %s with two contents" % m.msg_id)

    async def _ack(self, conn, force=False):
        if self.cursor is None or self.cursor == self.acked_cursor:
            return
        now = time.monotonic()
        if not force and now - self.last_ack < ACK_EVERY:
            return
        try:
            await conn.ws.send(encode(frame(ack={"up_to": self.cursor_id})))
        except (websockets.ConnectionClosed, OSError):
            conn.broken = True
            return
        self.acked_cursor = self.cursor
        self.last_ack = now

    async def _serve(self, conn):
        """Chat on one connection; returns why it ended: "goaway",
        "closed", "timeout" or "shutdown"."""
        load = self.load
        next_send = time.monotonic() + random.uniform(0, load.interval)
        while True:
            if load.shutdown.is_set():
                await self._ack(conn, force=True)
                return "shutdown"
            if conn.closed or conn.broken:
                # closed after a Goaway: the server's 1001 at its time
                return "goaway" if conn.goaway_at is not None else "closed"
            now = time.monotonic()
            if conn.goaway_at is not None and now >= conn.goaway_at:
                await self._ack(conn, force=True)
                return "goaway"
            await self._ack(conn)
            cmid = self._next_cmid() if now >= next_send else None
            if cmid is None:
                wait = 0.2
                if next_send > now:
                    wait = min(wait, next_send - now)
                if conn.goaway_at is not None:
                    wait = min(wait, conn.goaway_at - now)
                conn.wake.clear()
                await _wait_event(conn.wake, wait)
                continue
            self.attempts += 1
            f = await self._request(conn, SEND_TIMEOUT, send={
                "to": self.peer, "body": self.sent[cmid],
                "client_msg_id": cmid})
            if f is None:
                self.no_reply += 1
                self.pending.appendleft(cmid)
                if conn.timed_out:
                    return "timeout"
                return "goaway" if conn.goaway_at is not None else "closed"
            if body(f) == "send_ack":
                self.ack_times.append(time.monotonic())
                next_send = time.monotonic() + random.uniform(
                    0.5, 1.5) * load.interval
                continue
            if body(f) == "error":
                name = load.pb.Error.Code.Name(f.error.code)
                self.send_errors[name] += 1
                self.error_times.append(time.monotonic())
                if name != "UNAVAILABLE":
                    self.unexpected.append("Send %s: %s" % (cmid, f))
                self.pending.appendleft(cmid)
                next_send = time.monotonic() + UNAVAILABLE_DELAY
                continue
            self.unexpected.append("Send %s answered %s" % (cmid, f))
            self.pending.appendleft(cmid)


class LoadReport:
    """The books of a ChatLoad after finish()."""

    def __init__(self, load, label):
        self.label = label
        cs = load.clients
        self.clients = len(cs)
        self.pairs = len(cs) // 2
        self.sent = sum(len(c.sent) for c in cs)
        self.attempts = sum(c.attempts for c in cs)
        self.acked = sum(len(c.acked()) for c in cs)
        self.send_errors = sum((c.send_errors for c in cs),
                               collections.Counter())
        self.no_reply = sum(c.no_reply for c in cs)
        by_user = {c.user: c for c in cs}
        self.lost = []
        self.dup_after_dedup = []
        self.ack_conflicts = []
        self.delivered = 0
        self.unacked_delivered = 0
        for c in cs:
            r = by_user[c.peer]
            acked = c.acked()
            for cmid, ids in c.acks.items():
                if len(ids) > 1:
                    self.ack_conflicts.append((c.user, cmid, sorted(ids)))
            by_cmid = collections.defaultdict(set)
            for mid, m in r.got.items():
                by_cmid[m.client_msg_id].add(mid)
                if m.client_msg_id not in acked:
                    self.unacked_delivered += 1
                elif acked[m.client_msg_id] != mid:
                    self.ack_conflicts.append((c.user, m.client_msg_id,
                                               [acked[m.client_msg_id], mid]))
            for cmid, mids in by_cmid.items():
                if len(mids) > 1:
                    self.dup_after_dedup.append((r.user, cmid, sorted(mids)))
            for cmid, mid in acked.items():
                if mid in r.got:
                    self.delivered += 1
                    if r.got[mid].body != c.sent[cmid]:
                        self.ack_conflicts.append((c.user, cmid, "body"))
                else:
                    self.lost.append((c.user, r.user, cmid, mid))
        self.raw_dups = sum(n - 1 for c in cs for n in c.raw.values())
        self.own_replayed = sum(len(c.own) for c in cs)
        self.order_violations = [(c.user, v) for c in cs
                                 for v in c.order_violations]
        self.mismatches = [(c.user, m) for c in cs for m in c.mismatches]
        self.unexpected = [(c.user, u) for c in cs for u in c.unexpected]
        self.reconnects = [len(c.reconnect_times) for c in cs]
        self.reconnect_times = [t for c in cs for t in c.reconnect_times]
        self.goaways = [len(c.goaways) for c in cs]
        self.goaway_ms = [ms for c in cs for ms in c.goaways]
        self.leave_reasons = sum((c.leave_reasons for c in cs),
                                 collections.Counter())
        self.close_codes = sum((c.close_codes for c in cs),
                               collections.Counter())
        self.connect_failures = sum((c.connect_failures for c in cs),
                                    collections.Counter())
        self.not_done = [c.user for c in cs if not c.sending_done]
        self.duration = load.duration
        self.extra = []

    def text(self):
        rc = self.reconnects
        lines = [
            "---- %s ----" % self.label,
            "clients %d (%d pairs), %.1f s of chat" % (
                self.clients, self.pairs, self.duration),
            "sent %d messages (%d Send attempts, %d retries), acked %d, "
            "delivered %d, lost %d" % (
                self.sent, self.attempts, self.attempts - self.sent,
                self.acked, self.delivered, len(self.lost)),
            "Send errors %s, Sends without reply %d" % (
                dict(self.send_errors) or "none", self.no_reply),
            "duplicate deliveries before dedup (same msg_id again) %d, "
            "duplicates after dedup (one client_msg_id, two msg_ids) %d, "
            "own messages replayed to their sender %d" % (
                self.raw_dups, len(self.dup_after_dedup), self.own_replayed),
            "reconnects %d (per client min %d max %d), left because %s, "
            "close codes %s" % (
                sum(rc), min(rc) if rc else 0, max(rc) if rc else 0,
                dict(self.leave_reasons), dict(self.close_codes)),
            "time without a session (leave -> AuthOk): %s" % _stats(
                self.reconnect_times),
            "Goaways %d, reconnect_after_ms %s" % (
                len(self.goaway_ms),
                "min %d max %d" % (min(self.goaway_ms), max(self.goaway_ms))
                if self.goaway_ms else "none"),
            "connect/auth failures %s" % (dict(self.connect_failures)
                                          or "none"),
            "order violations %d, mismatches %d, unexpected frames %d" % (
                len(self.order_violations), len(self.mismatches),
                len(self.unexpected)),
        ] + self.extra
        return "\n".join(lines)

    def print(self):
        print("\n" + self.text(), flush=True)

    def check(self):
        """The promise: every acknowledged message arrived, none twice
        after dedup, in inbox order per connection, nothing odd."""
        problems = []
        if self.not_done:
            problems.append("%d clients did not get all their sends "
                            "acknowledged: %s" % (len(self.not_done),
                                                  self.not_done[:5]))
        if self.lost:
            problems.append("%d acknowledged messages never arrived, e.g. "
                            "%s" % (len(self.lost), self.lost[:5]))
        if self.dup_after_dedup:
            problems.append("%d messages stored twice: %s" % (
                len(self.dup_after_dedup), self.dup_after_dedup[:5]))
        if self.ack_conflicts:
            problems.append("acks disagree: %s" % self.ack_conflicts[:5])
        if self.order_violations:
            problems.append("%d messages out of inbox order on a "
                            "connection: %s" % (len(self.order_violations),
                                                self.order_violations[:5]))
        if self.mismatches:
            problems.append("mismatches: %s" % self.mismatches[:5])
        if self.unexpected:
            problems.append("unexpected: %s" % self.unexpected[:5])
        assert not problems, "\n".join([self.text()] + problems)


class ChatLoad:
    """`pairs` pairs of users ("<prefix>a<i>" <-> "<prefix>b<i>", device
    "phone"), each sending to the other every `interval` seconds (random
    0.5x..1.5x) until stop(), at most max_msgs each."""

    def __init__(self, n, pairs, interval=0.3, max_msgs=400, prefix="u",
                 deadline=150):
        import imtest
        self.pb = imtest.load_pb()
        self.n = n
        self.url = n.url
        self.interval = interval
        self.max_msgs = max_msgs
        self.deadline = time.monotonic() + deadline
        self.stopping = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.clients = []
        for i in range(pairs):
            a, b = "%sa%d" % (prefix, i), "%sb%d" % (prefix, i)
            self.clients.append(ChatClient(self, a, b, "phone"))
            self.clients.append(ChatClient(self, b, a, "phone"))
        self.tasks = []
        self.started = None
        self.duration = 0.0

    @property
    def users(self):
        return [c.user for c in self.clients]

    def acked_total(self):
        return sum(len(c.acked()) for c in self.clients)

    def sessions_by_pid(self):
        """{worker pid: number of clients whose current session is there}"""
        from imchat import session_pid
        out = collections.Counter()
        for c in self.clients:
            if c.conn is not None and c.conn.session:
                out[session_pid(c.conn.session)] += 1
        return out

    async def start(self, timeout=30):
        """Start every client; returns once each has a session."""
        self.started = time.monotonic()
        self.tasks = [asyncio.ensure_future(c.run()) for c in self.clients]
        await self.until(lambda: all(c.connected.is_set()
                                     for c in self.clients),
                         timeout, "every client's first session")

    async def until(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while not cond():
            for t in self.tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.0fs waiting for %s"
                                     % (timeout, what))
            await asyncio.sleep(0.05)

    async def wait_acked(self, more, timeout=30):
        """Wait until `more` messages more than now are acknowledged."""
        goal = self.acked_total() + more
        await self.until(lambda: self.acked_total() >= goal, timeout,
                         "%d acknowledged messages (have %d)"
                         % (goal, self.acked_total()))

    def all_delivered(self):
        by_user = {c.user: c for c in self.clients}
        for c in self.clients:
            got = by_user[c.peer].got
            for mid in c.acked().values():
                if mid not in got:
                    return False
        return True

    async def finish(self, label, send_timeout=40, deliver_timeout=30):
        """Stop new messages, let the retries through, wait (bounded) for
        every acknowledged message to arrive, close every client; the
        LoadReport (checked by the caller)."""
        self.stopping.set()
        try:
            await self.until(lambda: all(c.sending_done
                                         for c in self.clients),
                             send_timeout, "every send acknowledged")
            await self.until(self.all_delivered, deliver_timeout,
                             "every acknowledged message delivered")
            # the last Acks go out
            await asyncio.sleep(ACK_EVERY + 0.1)
        except AssertionError:
            pass        # the report says what is missing
        self.duration = time.monotonic() - self.started
        self.shutdown.set()
        for c in self.clients:
            if c.conn is not None:
                c.conn.wake.set()
        done, running = await asyncio.wait(self.tasks, timeout=20)
        for t in running:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()
        return LoadReport(self, label)


# --------------------------------------------------------------------------
# a bystander that must notice nothing

class Bystander:
    """`user` pings and sends to `friend` every `pace` seconds; every
    round must succeed and the friend must get every message, in order."""

    def __init__(self, n, user="bystander", friend="friend", pace=0.2):
        self.n = n
        self.user = user
        self.friend_user = friend
        self.pace = pace
        self.rounds = []        # monotonic times of good rounds
        self.failures = []
        self.acked = []
        self._stop = False
        self.task = None

    async def start(self):
        self.me = await login(self.n, self.user)
        self.friend = await login(self.n, self.friend_user)
        await self.round()
        self.task = asyncio.ensure_future(self._loop())
        return self

    @property
    def pid(self):
        return self.me.pid

    async def round(self):
        i = len(self.acked)
        try:
            await self.me.ping(ts=1000 + i, timeout=10)
            ack = await self.me.send_ok(self.friend_user, b"by%d" % i,
                                        cmid="by%d" % i, timeout=10)
            self.acked.append(ack.msg_id)
            self.rounds.append(time.monotonic())
        except AssertionError as e:
            self.failures.append("round %d: %s" % (i, e))

    async def _loop(self):
        deadline = time.monotonic() + 120
        while not self._stop and time.monotonic() < deadline:
            await self.round()
            if self.failures:
                return
            await asyncio.sleep(self.pace)

    def rounds_since(self, t):
        return sum(1 for r in self.rounds if r >= t)

    async def more_rounds(self, k, timeout=30):
        """Wait for k more good rounds (AssertionError if it stalls)."""
        t = time.monotonic()
        deadline = t + timeout
        while self.rounds_since(t) < k:
            assert not self.failures, "the bystander noticed: %s" % (
                self.failures)
            assert time.monotonic() < deadline, "the bystander stalled"
            await asyncio.sleep(0.05)

    async def finish(self, after=3):
        """`after` more good rounds, then stop and check everything."""
        t = time.monotonic()
        deadline = t + 30
        while (self.rounds_since(t) < after and not self.failures
               and time.monotonic() < deadline and not self.task.done()):
            await asyncio.sleep(0.05)
        self._stop = True
        await asyncio.wait_for(self.task, 30)
        assert not self.failures, "the bystander noticed: %s" % self.failures
        assert self.rounds_since(t) >= after, "the bystander stalled"
        assert not self.me.closed and not self.friend.closed
        assert not self.me.errors(), self.me.errors()
        n = len(self.acked)
        await self.friend.until(lambda: len(self.friend.live_messages()) >= n,
                                10, "the bystander's %d messages" % n)
        got = self.friend.live_messages()
        assert [m.msg_id for m in got] == self.acked
        assert [m.body for m in got] == [b"by%d" % i for i in range(n)]
        await self.me.ping(ts=99)
        await self.friend.ping(ts=98)
        await self.me.close()
        await self.friend.close()
        return n


# --------------------------------------------------------------------------
# processes and Redis

def fd_count(pid):
    """Open file descriptors of a process."""
    return len(os.listdir("/proc/%d/fd" % pid))


def redis_keys(redis, pattern):
    return sorted(k.decode() for k in redis_cmd(redis, "KEYS", pattern))


def alive_pids(redis):
    """Worker pids whose im:route:<host>:<pid>:alive key exists."""
    out = set()
    for k in redis_keys(redis, "im:route:*:alive"):
        out.add(int(k.rsplit(":", 2)[1]))
    return out


def redis_pipeline(redis, commands, timeout=10):
    """Several commands on one connection, in one write; their replies."""
    import socket
    from imchat import _resp
    out = b""
    for args in commands:
        out += b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", redis.port),
                                  timeout=timeout) as s:
        s.sendall(out)
        f = s.makefile("rb")
        return [_resp(f) for _ in commands]


def routes_of(redis, users):
    """{user: {session: channel}} of the users' route hashes."""
    users = list(users)
    replies = redis_pipeline(redis, [("HGETALL", routes_key(u))
                                     for u in users])
    return {u: {r[i].decode(): r[i + 1].decode()
                for i in range(0, len(r), 2)}
            for u, r in zip(users, replies)}


def channel_pid(channel):
    return int(channel.rsplit(":", 1)[1])


def stop_and_check_log(n, allowed=()):
    """Stop nginx and check its error.log like the fixture does, except
    for lines matching one of the `allowed` regexes (the expected
    consequences of what the test did on purpose)."""
    n.stop()
    n.checked = True
    bad = [line for line in n.bad_log_lines()
           if not any(re.search(a, line) for a in allowed)]
    assert not bad, "error.log of nginx has forbidden lines:\n" + "\n".join(
        bad[:50])


def redis_up_pids(n, since=0):
    """Worker pids that logged their Redis link up (from byte `since`)."""
    text = n._log_since(since)
    return {int(m.group(1)) for m in re.finditer(
        r"redis \S+ is up, channel \"im:route:[^\"]*:(\d+)\"", text)}
