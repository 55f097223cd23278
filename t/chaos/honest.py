"""The honest population of the chaos run: users with one or two devices,
chatting over real WebSockets (the websockets library) like a careful
app does.

A device: connects to node A (through whose workers the faults go) or
node B, signs in (Auth retried on UNAVAILABLE), then at a random pace
sends 1:1 and group messages and read receipts, types, watches presence,
joins its own (open) groups again, pages through its inbox with Sync,
pings, and acknowledges what it has seen.  Goaway: it goes on until
reconnect_after_ms, then leaves and reconnects; any close: it reconnects
after a short random delay.  A Send answered UNAVAILABLE, or lost with
its connection or without reply for SEND_TIMEOUT, is sent again with the
same client_msg_id.

The books (Population.msgs, Device.first ...) record every message
created, every SendAck, and every Message each device received (live or
replayed: frame id 0; Sync pages are checked apart), so that the run can
tell at the end which acknowledged message did not reach which device.

All random choices come from the run's one random.Random."""

import asyncio
import collections
import time

import websockets

import imtest

SEND_TIMEOUT = 10.0     # no reply to a request this long: reconnect
AUTH_RETRY_FOR = 8.0    # Auth answered UNAVAILABLE: retry this long
ACK_EVERY = 0.4


def id_key(mid):
    ms, _, seq = mid.partition("-")
    return int(ms), int(seq)


def is_msg_id(s):
    ms, sep, seq = s.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit()


def sender_of(m):
    return getattr(m, "from")


class Msg:
    """A message an honest device created."""

    __slots__ = ("cmid", "sender", "sdev", "to", "group", "body", "type",
                 "expect", "acks", "attempts", "created", "acked_at",
                 "failed")

    def __init__(self, cmid, sender, sdev, to, group, body, type, expect):
        self.cmid = cmid
        self.sender = sender
        self.sdev = sdev
        self.to = to
        self.group = group
        self.body = body
        self.type = type
        self.expect = expect        # set of (user, device) keys
        self.acks = set()           # msg_ids of its SendAcks
        self.attempts = 0
        self.created = time.monotonic()
        self.acked_at = None
        self.failed = None          # a refusal an honest client cannot fix

    @property
    def msg_id(self):
        return min(self.acks, key=id_key) if self.acks else None


class _Conn:
    def __init__(self, ws, node):
        self.ws = ws
        self.node = node
        self.waiting = {}           # request id -> [frames], done(), future
        self.sends = {}             # request id -> cmid
        self.session = None
        self.pid = None
        self.closed = False
        self.broken = False
        self.timed_out = False
        self.goaway_at = None
        self.wake = asyncio.Event()
        self.reader = None
        self.opened = time.monotonic()


class Device:
    def __init__(self, pop, user, dev):
        self.pop = pop
        self.rng = pop.rng
        self.user = user
        self.dev = dev
        self.key = (user, dev)
        self.token = pop.token(user)
        self.seq = 0
        self.pending = collections.deque()      # cmids to (re)send
        self.first = {}             # msg_id -> Message, first sighting
        self.raw = collections.Counter()
        self.order_max = None       # key of the newest first sighting
        self.order_max_id = None
        self.cursor = None
        self.cursor_id = None
        self.acked_cursor = None
        self.last_ack = 0.0
        self.from_peer = {}         # user -> newest msg_id got from them
        self.sessions = []
        self.conn = None
        self.connected = asyncio.Event()
        self.counts = collections.Counter()
        self.next_retry = 0.0
        # a patient app rides out a stalled worker; an impatient one
        # reconnects after SEND_TIMEOUT
        self.patient = pop.rng.random() < 0.35
        self.timeout = 30.0 if self.patient else SEND_TIMEOUT

    # -- bookkeeping

    def note(self, what, detail):
        self.pop.anomaly("%s/%s: %s: %s" % (self.user, self.dev, what,
                                            detail))

    def online(self):
        return (self.conn is not None and not self.conn.closed
                and self.conn.session is not None)

    # -- the life of a device

    async def run(self):
        pop = self.pop
        left_at = None
        while not pop.shutdown.is_set() and time.monotonic() < pop.hard_end:
            conn = await self._connect()
            if conn is None:
                await asyncio.sleep(self.rng.uniform(0.1, 0.4))
                continue
            if left_at is not None:
                pop.reconnect_gaps.append(time.monotonic() - left_at)
            self.conn = conn
            self.connected.set()
            reason = await self._serve(conn)
            left_at = time.monotonic()
            self.counts["left: " + reason] += 1
            await self._close(conn)
            self.conn = None
            if reason == "shutdown":
                break
            if reason == "left":
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            elif reason == "goaway" and conn.goaway_at is not None:
                await asyncio.sleep(max(0.0, min(15.0, conn.goaway_at
                                                 - time.monotonic())))
            else:
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def _connect(self):
        pop = self.pop
        node = "B" if self.rng.random() < pop.node_b_share else "A"
        url = pop.urls[node]
        try:
            ws = await websockets.connect(
                url, open_timeout=5, close_timeout=2, ping_interval=None,
                max_size=16 << 20, subprotocols=["im.v1"])
        except (OSError, asyncio.TimeoutError,
                websockets.WebSocketException) as e:
            self.counts["connect failed: %s" % type(e).__name__] += 1
            return None
        conn = _Conn(ws, node)
        conn.reader = asyncio.ensure_future(self._read(conn))
        until = time.monotonic() + AUTH_RETRY_FOR
        while True:
            fs = await self._request(conn, self.timeout, auth={
                "token": self.token, "device": self.dev})
            f = fs[0] if fs else None
            if f is None:
                self.counts["auth: no reply"] += 1
                await self._close(conn)
                return None
            b = imtest.body(f)
            if b == "auth_ok":
                conn.session = f.auth_ok.session
                conn.pid = int(conn.session.split(":")[1])
                self.sessions.append((node, conn.session))
                if f.auth_ok.user != self.user:
                    self.note("AuthOk", "user %r" % f.auth_ok.user)
                return conn
            if (b == "error" and f.error.code == pop.code("UNAVAILABLE")
                    and time.monotonic() < until):
                self.counts["auth: UNAVAILABLE"] += 1
                await asyncio.sleep(self.rng.uniform(0.15, 0.4))
                continue
            if b == "error" and f.error.code == pop.code("UNAVAILABLE"):
                self.counts["auth: gave up"] += 1
            else:
                self.note("Auth answered", str(f).replace("\n", " "))
            await self._close(conn)
            return None

    async def _close(self, conn):
        try:
            await asyncio.wait_for(conn.ws.close(), 3)
        except (asyncio.TimeoutError, websockets.WebSocketException,
                OSError):
            pass
        if conn.reader is not None:
            try:
                await asyncio.wait_for(conn.reader, 3)
            except (asyncio.TimeoutError, Exception):
                conn.reader.cancel()

    async def _request(self, conn, timeout, done=None, **body_):
        """Send a frame with a fresh id; the frames that answer it once
        done(frames) (default: the first one) is true; None when the
        connection ended or no answer came in time."""
        if conn.closed or conn.broken:
            return None
        id = self.pop.next_id()
        fut = asyncio.get_running_loop().create_future()
        conn.waiting[id] = ([], done or (lambda fs: len(fs) >= 1), fut)
        if "send" in body_:
            conn.sends[id] = body_["send"]["client_msg_id"]
        try:
            await conn.ws.send(imtest.encode(imtest.frame(id=id, **body_)))
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.timed_out = True
            return None
        except (websockets.ConnectionClosed, OSError):
            conn.broken = True
            return None
        finally:
            conn.waiting.pop(id, None)

    async def _post(self, conn, **body_):
        try:
            await conn.ws.send(imtest.encode(imtest.frame(
                id=self.pop.next_id(), **body_)))
            return True
        except (websockets.ConnectionClosed, OSError):
            conn.broken = True
            return False

    async def _read(self, conn):
        pop = self.pop
        try:
            async for data in conn.ws:
                if not isinstance(data, bytes):
                    self.note("text message", repr(data[:80]))
                    continue
                try:
                    f = imtest.decode(data)
                except Exception as e:
                    self.note("undecodable frame", repr(e))
                    continue
                b = imtest.body(f)
                if b == "auth_ok" and conn.session is None:
                    # the replay may follow in the same read, before
                    # _connect() resumes
                    conn.session = f.auth_ok.session
                    conn.pid = int(conn.session.split(":")[1])
                if b == "send_ack" and f.id in conn.sends:
                    self._acked(conn.sends[f.id], f.send_ack)
                if f.id:
                    w = conn.waiting.get(f.id)
                    if w is not None:
                        fs, done, fut = w
                        fs.append(f)
                        if not fut.done() and done(fs):
                            fut.set_result(fs)
                    continue
                if b == "message":
                    self._message(conn, f.message)
                elif b == "goaway":
                    self.counts["goaway"] += 1
                    if conn.goaway_at is None:
                        conn.goaway_at = (time.monotonic()
                                          + f.goaway.reconnect_after_ms
                                          / 1000.0)
                    conn.wake.set()
                elif b == "typing":
                    self.counts["typing got"] += 1
                elif b == "presence":
                    self.counts["presence pushed"] += 1
                else:
                    self.note("push", str(f).replace("\n", " ")[:200])
        except websockets.ConnectionClosed:
            pass
        except Exception as e:      # a bug of the client must show
            pop.anomaly("%s/%s reader: %r" % (self.user, self.dev, e))
        finally:
            conn.closed = True
            code = conn.ws.close_code
            self.counts["close %s" % code] += 1
            for fs, done, fut in list(conn.waiting.values()):
                if not fut.done():
                    fut.set_result(None)
            conn.wake.set()

    def _acked(self, cmid, ack):
        m = self.pop.msgs.get(cmid)
        if m is None:
            self.note("SendAck for an unknown cmid", cmid)
            return
        if ack.client_msg_id != cmid:
            self.note("SendAck", "for %s says %s" % (cmid,
                                                      ack.client_msg_id))
        if not is_msg_id(ack.msg_id):
            self.note("SendAck", "bad msg_id %r" % ack.msg_id)
            return
        m.acks.add(ack.msg_id)
        if m.acked_at is None:
            m.acked_at = time.monotonic()

    def _message(self, conn, m):
        pop = self.pop
        mid = m.msg_id
        if not is_msg_id(mid):
            self.note("Message", "bad msg_id %r" % mid)
            return
        self.raw[mid] += 1
        if mid in self.first:
            return
        self.first[mid] = m
        # inbox order is cursor order; msg_ids are not ordered across
        # senders
        cur = m.cursor or mid
        if not is_msg_id(cur):
            self.note("Message", "bad cursor %r" % cur)
            return
        key = id_key(cur)
        frm = sender_of(m)
        sent = pop.msgs.get(m.client_msg_id) if m.client_msg_id else None
        own = sent is not None and sent.sdev == self.key
        if sent is not None and sent.sender == frm:
            if m.body != sent.body or m.to != sent.to \
                    or m.group != sent.group or m.type != sent.type:
                pop.violation("content", "%s/%s got msg_id %s for cmid %s "
                              "with other content (to %r group %r type %r, "
                              "%d bytes; sent to %r group %r type %r, %d "
                              "bytes)" % (self.user, self.dev, mid,
                                          m.client_msg_id, m.to, m.group,
                                          m.type, len(m.body), sent.to,
                                          sent.group, sent.type,
                                          len(sent.body)))
            elif self.key not in sent.expect and not own:
                pop.violation("misdelivery", "%s/%s got %s (cmid %s) "
                              "meant for %s" % (self.user, self.dev, mid,
                                                m.client_msg_id,
                                                sent.to or sent.group))
        if frm in pop.honest_users and frm != self.user and m.to == self.user:
            self.from_peer[frm] = mid
        if not own:
            if self.order_max is not None and key < self.order_max:
                pop.order_violation(self, mid, conn)
            else:
                self.order_max = key
                self.order_max_id = mid
        if self.cursor is None or key > self.cursor:
            self.cursor = key
            self.cursor_id = cur

    async def _ack(self, conn, force=False):
        if self.cursor is None or self.cursor == self.acked_cursor:
            return True
        now = time.monotonic()
        if not force and now - self.last_ack < ACK_EVERY:
            return True
        if not await self._post(conn, ack={"up_to": self.cursor_id}):
            return False
        self.acked_cursor = self.cursor
        self.last_ack = now
        self.counts["ack"] += 1
        return True

    # -- what a device does

    async def _serve(self, conn):
        pop = self.pop
        rng = self.rng
        next_action = time.monotonic() + rng.uniform(0, pop.pace[1])
        while True:
            if pop.shutdown.is_set():
                await self._ack(conn, force=True)
                return "shutdown"
            if conn.closed or conn.broken:
                return "goaway" if conn.goaway_at is not None else "closed"
            now = time.monotonic()
            if conn.goaway_at is not None and now >= conn.goaway_at:
                await self._ack(conn, force=True)
                return "goaway"
            if not await self._ack(conn):
                continue
            if self.pending and now >= self.next_retry:
                r = await self._send(conn, self.pending.popleft())
                if r is not None:
                    return r
                continue
            if now >= next_action and not pop.stopping.is_set():
                r = await self._action(conn)
                if r is not None:
                    return r
                next_action = time.monotonic() + rng.uniform(*pop.pace)
                continue
            wait = 0.25
            if not pop.stopping.is_set():
                wait = min(wait, max(0.0, next_action - now))
            if self.pending:
                wait = min(wait, max(0.0, self.next_retry - now))
            if conn.goaway_at is not None:
                wait = min(wait, max(0.0, conn.goaway_at - now))
            conn.wake.clear()
            try:
                await asyncio.wait_for(conn.wake.wait(), max(wait, 0.01))
            except asyncio.TimeoutError:
                pass

    def _lost(self, conn):
        """Why a request got no answer: the end reason of the session."""
        if conn.timed_out:
            return "timeout"
        return "goaway" if conn.goaway_at is not None else "closed"

    async def _action(self, conn):
        pop = self.pop
        rng = self.rng
        groups = pop.groups_of.get(self.user, [])
        r = rng.random()
        if r < 0.40:
            return await self._send(conn, self._new_direct())
        if r < 0.60 and groups:
            return await self._send(conn, self._new_group(rng.choice(
                groups)))
        if r < 0.68 and self.from_peer:
            peer = rng.choice(sorted(self.from_peer))
            return await self._send(conn, self._new_receipt(
                peer, self.from_peer[peer]))
        if r < 0.78:
            if groups and rng.random() < 0.4:
                t = {"group": rng.choice(groups)}
            else:
                t = {"to": rng.choice(pop.others(self.user))}
            self.counts["typing"] += 1
            pop.count("typing")
            return None if await self._post(conn, typing=t) else "closed"
        if r < 0.85:
            return await self._sync(conn)
        if r < 0.91:
            return await self._presence(conn)
        if r < 0.925:
            # the app goes away for a moment (and its session ends,
            # whatever state the server's Redis link is in)
            pop.count("leave")
            await self._ack(conn, force=True)
            return "left"
        if r < 0.95 and groups:
            fs = await self._request(conn, self.timeout, group_join={
                "group": rng.choice(groups)})
            if fs is None:
                return self._lost(conn)
            pop.count("group_join")
            self._expect_ok(fs[0], "GroupJoin", ("ok",))
            return None
        fs = await self._request(conn, self.timeout, ping={"ts_ms": 7})
        if fs is None:
            return self._lost(conn)
        pop.count("ping")
        self._expect_ok(fs[0], "Ping", ("pong",))
        return None

    def _expect_ok(self, f, what, bodies):
        b = imtest.body(f)
        if b in bodies:
            return True
        if b == "error" and f.error.code == self.pop.code("UNAVAILABLE"):
            self.counts["%s UNAVAILABLE" % what] += 1
            return False
        self.note(what + " answered", str(f).replace("\n", " ")[:200])
        return False

    # -- messages

    def _cmid(self):
        self.seq += 1
        return "%s.%s.%d" % (self.user, self.dev, self.seq)

    def _body(self, cmid):
        rng = self.rng
        r = rng.random()
        n = (rng.randint(1, 200) if r < 0.8 else
             rng.randint(200, 4000) if r < 0.96 else
             rng.randint(4000, 40000))
        return cmid.encode() + b"|" + rng.randbytes(n)

    def _register(self, m):
        self.pop.msgs[m.cmid] = m
        self.pop.count("created " + ("read" if m.type == "read" else
                                     "group" if m.group else "1:1"))
        return m.cmid

    def _new_direct(self, to=None):
        pop = self.pop
        to = to or self.rng.choice(pop.others(self.user))
        cmid = self._cmid()
        expect = (set(pop.devices_of[to]) | set(pop.devices_of[self.user]))
        expect.discard(self.key)
        t = self.rng.choice(("", "", "text", "x" * 64))
        return self._register(Msg(cmid, self.user, self.key, to, "",
                                  self._body(cmid), t, expect))

    def _new_group(self, gid):
        pop = self.pop
        cmid = self._cmid()
        expect = set()
        for u in pop.groups[gid]:
            expect |= set(pop.devices_of[u])
        expect.discard(self.key)
        return self._register(Msg(cmid, self.user, self.key, "", gid,
                                  self._body(cmid), "", expect))

    def _new_receipt(self, peer, mid):
        pop = self.pop
        cmid = self._cmid()
        expect = (set(pop.devices_of[peer]) | set(pop.devices_of[self.user]))
        expect.discard(self.key)
        return self._register(Msg(cmid, self.user, self.key, peer, "",
                                  mid.encode(), "read", expect))

    async def _send(self, conn, cmid):
        pop = self.pop
        m = pop.msgs[cmid]
        m.attempts += 1
        pop.count("send attempts")
        body_ = {"body": m.body, "client_msg_id": cmid, "type": m.type}
        if m.group:
            body_["group"] = m.group
        else:
            body_["to"] = m.to
        fs = await self._request(conn, self.timeout, send=body_)
        if fs is None:
            pop.count("send lost (no reply)")
            if not m.acks:
                self.pending.appendleft(cmid)
            return self._lost(conn)
        f = fs[0]
        b = imtest.body(f)
        if b == "send_ack":
            return None
        if b == "error" and f.error.code in (pop.code("UNAVAILABLE"),
                                             pop.code("RATE_LIMITED")):
            pop.count("send %s" % pop.code_name(f.error.code))
            self.pending.appendleft(cmid)
            self.next_retry = time.monotonic() + self.rng.uniform(0.2, 0.5)
            return None
        m.failed = str(f).replace("\n", " ")[:200]
        self.note("Send %s answered" % cmid, m.failed)
        return None

    # -- Sync, presence

    async def _sync(self, conn):
        pop = self.pop
        rng = self.rng
        back = rng.random() < 0.3
        limit = rng.choice((0, 1, 5, 20, 100))
        start = ""
        if self.first and (back or rng.random() < 0.5):
            # a cursor: a place in this inbox
            m = rng.choice(list(self.first.values()))
            start = m.cursor or m.msg_id
        if not start:
            back = False        # neither bound: oldest first
        pop.count("sync " + ("before" if back else "after"))
        prev = None
        for page in range(4):
            req = {"limit": limit}
            if back:
                req["before"] = start
            else:
                req["after"] = start
            fs = await self._request(
                conn, self.timeout,
                done=lambda fs: imtest.body(fs[-1]) in ("sync_done",
                                                        "error"),
                sync=req)
            if fs is None:
                return self._lost(conn)
            pop.count("sync pages")
            end = fs[-1]
            if imtest.body(end) == "error":
                self._expect_ok(end, "Sync", ())
                return None
            msgs = [f.message for f in fs[:-1]]
            if any(imtest.body(f) != "message" for f in fs[:-1]):
                self.note("Sync page", "frames %s" % [imtest.body(f)
                                                      for f in fs])
                return None
            keys = [id_key(x.cursor or x.msg_id) for x in msgs]
            want = sorted(keys, reverse=back)
            if keys != want or len(set(keys)) != len(keys):
                pop.violation("sync order", "%s/%s: Sync(%s %r limit %d) "
                              "page not in %s order: %s" % (
                                  self.user, self.dev,
                                  "before" if back else "after", start,
                                  limit, "descending" if back else
                                  "ascending", [x.cursor for x in msgs]))
            lim = limit if 0 < limit <= 1000 else 1000
            if len(msgs) > lim:
                self.note("Sync page", "%d entries for limit %d" % (
                    len(msgs), limit))
            if msgs and end.sync_done.last != msgs[-1].cursor:
                self.note("SyncDone", "last %r, page ends with %r" % (
                    end.sync_done.last, msgs[-1].cursor))
            if prev is not None and msgs:
                a, b = prev, keys[0]
                if (a >= b) if not back else (a <= b):
                    pop.violation("sync order", "%s/%s: Sync pages "
                                  "overlap or go back: %s then %s" % (
                                      self.user, self.dev, a, b))
            if not end.sync_done.more or not msgs:
                return None
            prev = keys[-1]
            start = end.sync_done.last
        return None

    async def _presence(self, conn):
        pop = self.pop
        users = self.rng.sample(pop.others(self.user),
                                self.rng.randint(1, 8))
        n = len(users)
        fs = await self._request(
            conn, self.timeout,
            done=lambda fs: (imtest.body(fs[-1]) == "error"
                             or len(fs) >= n),
            presence_sub={"users": users})
        if fs is None:
            return self._lost(conn)
        pop.count("presence_sub")
        if imtest.body(fs[-1]) == "error":
            self._expect_ok(fs[-1], "PresenceSub", ())
            return None
        got = sorted(f.presence.user for f in fs
                     if imtest.body(f) == "presence")
        if got != sorted(users):
            self.note("PresenceSub", "asked %s, answers for %s" % (
                sorted(users), got))
        return None


class Population:
    """The honest users, their devices, groups and books."""

    def __init__(self, rng, urls, token, nusers=36, node_b_share=0.4,
                 pace=(0.4, 1.6), hard_end=None, violation=None):
        self.rng = rng
        self.urls = urls
        self._token = token
        self.node_b_share = node_b_share
        self.pace = pace
        self.hard_end = hard_end or time.monotonic() + 600
        self._violation = violation
        self.pb = imtest.load_pb()
        self.stopping = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.msgs = {}
        self.anomalies = []
        self.order_violations = []
        self.counts = collections.Counter()
        self.reconnect_gaps = []
        self._ids = 0
        self.honest_users = ["u%02d" % i for i in range(nusers)]
        self.devices = []
        self.devices_of = {}
        for i, u in enumerate(self.honest_users):
            devs = ["phone"] + (["laptop"] if i % 3 == 0 else [])
            self.devices_of[u] = [(u, d) for d in devs]
        self._others = {u: [v for v in self.honest_users if v != u]
                        for u in self.honest_users}
        # groups: 5 open groups of 3..8 honest members
        self.groups = {}
        self.groups_of = collections.defaultdict(list)
        for g in range(5):
            gid = "g%d" % g
            members = sorted(rng.sample(self.honest_users,
                                        rng.randint(3, 8)))
            self.groups[gid] = members
            for u in members:
                self.groups_of[u].append(gid)
        self.tasks = []

    def token(self, user):
        return self._token(user)

    def others(self, user):
        return self._others[user]

    def next_id(self):
        self._ids += 1
        return self._ids

    def code(self, name):
        return self.pb.Error.Code.Value(name)

    def code_name(self, code):
        try:
            return self.pb.Error.Code.Name(code)
        except ValueError:
            return str(code)

    def count(self, what, n=1):
        self.counts[what] += n

    def anomaly(self, text):
        if len(self.anomalies) < 500:
            self.anomalies.append(text)
        self.counts["anomalies"] += 1

    def violation(self, kind, text):
        self._violation(kind, text)

    def order_violation(self, dev, mid, conn):
        text = ("%s/%s: first sighting of %s after %s (session %s, node "
                "%s)" % (dev.user, dev.dev, mid, dev.order_max_id,
                         conn.session, conn.node))
        self.order_violations.append(text)
        self._violation("order", text)

    def drop_on(self, pid, n):
        """Close (FIN) the connections of up to n signed-in devices whose
        session is on worker pid; they reconnect as after any close."""
        on = [d for d in self.devices if d.online() and d.conn.pid == pid]
        self.rng.shuffle(on)
        for d in on[:n]:
            try:
                d.conn.ws.transport.close()
            except Exception:
                pass
            d.counts["closed by a fault"] += 1
        return len(on[:n])

    def burst(self, n, from_node="B", to_node="A"):
        """Up to n signed-in devices on from_node each send at once a
        message to a user who has a device signed in on to_node (the
        traffic that crosses a node whose Redis link is in trouble)."""
        senders = [d for d in self.devices if d.online()
                   and d.conn.node == from_node]
        targets = sorted({d.user for d in self.devices if d.online()
                          and d.conn.node == to_node})
        self.rng.shuffle(senders)
        k = 0
        for d in senders[:n]:
            to = [u for u in targets if u != d.user]
            if not to:
                continue
            d.pending.append(d._new_direct(self.rng.choice(to)))
            d.next_retry = 0.0
            d.conn.wake.set()
            k += 1
        self.count("burst sends", k)
        return k

    def create_devices(self):
        for u in self.honest_users:
            for (_, d) in self.devices_of[u]:
                self.devices.append(Device(self, u, d))

    async def start(self, timeout=30):
        self.create_devices()
        self.tasks = [asyncio.ensure_future(d.run()) for d in self.devices]
        deadline = time.monotonic() + timeout
        while not all(d.connected.is_set() for d in self.devices):
            self._raise_failed()
            if time.monotonic() >= deadline:
                missing = [d.key for d in self.devices
                           if not d.connected.is_set()]
                raise RuntimeError("honest devices without a first session "
                                   "after %ds: %s" % (timeout, missing[:10]))
            await asyncio.sleep(0.1)

    def _raise_failed(self):
        for t in self.tasks:
            if t.done() and not t.cancelled() and t.exception():
                raise t.exception()

    # -- the end

    def unacked(self):
        return [m for m in self.msgs.values()
                if not m.acks and m.failed is None]

    def missing(self):
        """[(device key, Msg)] of acknowledged messages not (yet) seen."""
        by_key = {d.key: d for d in self.devices}
        out = []
        for m in self.msgs.values():
            mid = m.msg_id
            if mid is None:
                continue
            for k in m.expect:
                if mid not in by_key[k].first:
                    out.append((k, m))
        return out

    def all_online(self):
        return all(d.online() for d in self.devices)

    async def finish(self, send_timeout=20, deliver_timeout=20):
        """No new actions; retries go on until acked; wait (bounded) for
        every acked message to reach every device; then every device
        acknowledges and closes.  Returns the seconds each stage took."""
        t0 = time.monotonic()
        self.stopping.set()
        times = {}
        deadline = t0 + send_timeout
        while self.unacked() and time.monotonic() < deadline:
            self._raise_failed()
            await asyncio.sleep(0.2)
        times["acks"] = time.monotonic() - t0
        t1 = time.monotonic()
        deadline = t1 + deliver_timeout
        while time.monotonic() < deadline:
            self._raise_failed()
            if not self.missing() and self.all_online():
                break
            await asyncio.sleep(0.25)
        times["delivery"] = time.monotonic() - t1
        await asyncio.sleep(ACK_EVERY + 0.2)
        self.shutdown.set()
        for d in self.devices:
            if d.conn is not None:
                d.conn.wake.set()
        done, running = await asyncio.wait(self.tasks, timeout=20)
        for t in running:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                self.anomaly("device task: %r" % t.exception())
        return times

    def books(self):
        """The figures of the report and the lost messages."""
        by_key = {d.key: d for d in self.devices}
        created = len(self.msgs)
        acked = [m for m in self.msgs.values() if m.acks]
        lost = []
        delivered = 0
        conflicts = []
        for m in acked:
            if len(m.acks) > 1:
                conflicts.append("cmid %s acked with %s" % (
                    m.cmid, sorted(m.acks, key=id_key)))
            mid = m.msg_id
            for k in sorted(m.expect):
                d = by_key[k]
                if mid in d.first:
                    delivered += 1
                else:
                    lost.append((k, m))
        # one client_msg_id delivered under two msg_ids: stored twice
        stored_twice = []
        for d in self.devices:
            by_cmid = collections.defaultdict(set)
            for mid, x in d.first.items():
                if x.client_msg_id and x.client_msg_id in self.msgs:
                    by_cmid[x.client_msg_id].add(mid)
            for cmid, mids in by_cmid.items():
                if len(mids) > 1:
                    stored_twice.append("%s/%s got cmid %s as %s" % (
                        d.user, d.dev, cmid, sorted(mids, key=id_key)))
        dups = sum(n - 1 for d in self.devices for n in d.raw.values())
        return {
            "users": len(self.honest_users),
            "devices": len(self.devices),
            "groups": {g: len(m) for g, m in self.groups.items()},
            "created": created,
            "acked": len(acked),
            "unacked": len(self.unacked()),
            "refused": sum(1 for m in self.msgs.values() if m.failed),
            "deliveries_expected": delivered + len(lost),
            "delivered": delivered,
            "lost": lost,
            "duplicates_before_dedup": dups,
            "stored_twice": stored_twice,
            "ack_conflicts": conflicts,
            "send_attempts": self.counts["send attempts"],
        }
