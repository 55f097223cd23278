"""Hostile clients of the chaos run: several at once, next to the honest
population, each running random scenarios from SCENARIOS: frames at and
just past every limit, invalid frame sequences, split writes (the
handshake included), clients that stop reading, close mid-frame, send
garbage after Auth, or reconnect in storms.

Every scenario is bounded in time (SCENARIO_TIMEOUT) and in what it
sends; every write may be cut at random byte boundaries.  What the server
answered is kept as an outcome ("<kind> -> <answer>"); answers that
differ from what docs/protocol.md says are listed as surprises in the
report (not a failure by themselves: the run's invariants are about the
server staying safe and the honest users being served).

The hostile users are h0..h7, a 64-character id, and the groups hg
(open; h0..h3), hgc (closed; h0).  They never send to honest users."""

import asyncio
import collections
import struct
import time

import imtest
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                   Closed, RawWs)

SCENARIO_TIMEOUT = 20.0
HOSTILE_USERS = ["h%d" % i for i in range(8)]
LONG_USER = "h" + "L" * 63          # 64 characters: a valid id
TOO_LONG = "h" + "L" * 64           # 65
MAX_FRAME = 65536
PRESENCE_MAX = 200
MAX_SESSIONS = 16
HANDSHAKE_MAX = 8192
TOKEN_MAX = 8192


def exact_frame(size, make):
    """Serialized bytes of make(k) (an im.Frame whose padding is k bytes)
    of exactly `size` bytes, searching k."""
    k = max(0, size - 64)
    for _ in range(64):
        n = len(imtest.encode(make(k)))
        if n == size:
            return imtest.encode(make(k))
        k = max(0, k + (size - n))
        if n < size and len(imtest.encode(make(k))) > size:
            break
    for extra in range(0, 4):
        for kk in range(max(0, k - 8), k + 8):
            b = imtest.encode(make(kk, extra))
            if len(b) == size:
                return b
    raise ValueError("no frame of %d bytes" % size)


class Hostile:
    def __init__(self, rng, ports, mint, mint_sized, workers=4):
        self.rng = rng
        self.ports = ports              # {"A": .., "B": .., "A_slow": ..}
        self.mint = mint                # mint(user, exp=seconds)
        self.mint_sized = mint_sized    # mint_sized(user, length)
        self.workers = workers
        self.sent = collections.Counter()       # hostile frames by kind
        self.scenarios = collections.Counter()
        self.outcomes = collections.Counter()
        self.surprises = []
        self.errors = collections.Counter()
        self.conns = set()
        self.stop = asyncio.Event()
        self.tasks = []
        self._ids = 1 << 20
        self.tokens = {}
        self.sized = {}

    # -- helpers

    def prepare(self):
        """Tokens made ahead (minting is pure Python)."""
        for u in HOSTILE_USERS + [LONG_USER]:
            self.tokens[u] = self.mint(u)
        self.tokens["expired"] = self.mint("h1", exp=-60)
        self.tokens["long sub"] = self.mint(TOO_LONG)
        for n in (TOKEN_MAX, TOKEN_MAX + 1):
            self.sized[n] = self.mint_sized("h1", n)

    def nid(self):
        self._ids += 1
        return self._ids

    def port(self):
        return self.ports["B"] if self.rng.random() < 0.2 else \
            self.ports["A"]

    def count(self, kind, n=1):
        self.sent[kind] += n

    def outcome(self, kind, got, want=None):
        self.outcomes["%s -> %s" % (kind, got)] += 1
        if want is not None and got not in (want if isinstance(want, tuple)
                                            else (want,)):
            if len(self.surprises) < 200:
                self.surprises.append("%s: got %s, expected %s" % (
                    kind, got, want))

    async def conn(self, port=None, rcvbuf=None):
        c = RawWs(self.rng, port or self.port())
        self.conns.add(c)
        await c.open(rcvbuf=rcvbuf)
        return c

    def drop(self, c):
        self.conns.discard(c)
        if self.rng.random() < 0.3:
            c.abort()
        else:
            c.close()

    async def upgraded(self, port=None, split=None, rcvbuf=None,
                       reader=True):
        c = await self.conn(port, rcvbuf)
        if split is None:
            split = self.rng.random() < 0.6
        st = await c.handshake(split=split)
        self.count("handshake")
        if st != 101:
            self.outcome("handshake", st, 101)
            self.drop(c)
            return None
        if reader:
            c.start_reader(answer_pings=self.rng.random() < 0.9)
        return c

    async def send(self, c, frames, split=None):
        """Write WebSocket frames (bytes) in one go, maybe split."""
        if split is None:
            split = self.rng.random() < 0.5
        await c.write(b"".join(frames), split=split)

    def pbf(self, c, id=0, **body):
        return c.binary(c.pb(id=id, **body))

    async def reply(self, c, id, timeout=10, n=1):
        fs = await c.wait_frames(lambda s: len(s.replies(id)) >= n, timeout)
        return c.replies(id) if fs else c.replies(id)

    def answer(self, fs):
        """A short name of a reply list: body names / error code."""
        if not fs:
            return "nothing"
        f = fs[0]
        b = imtest.body(f)
        if b == "error":
            return "Error " + imtest.load_pb().Error.Code.Name(f.error.code)
        return b

    async def closed_with(self, c, timeout=5):
        await c.wait_frames(lambda s: s.close_frame is not None or s.eof,
                            timeout)
        code = c.close_code()
        if code is not None:
            return "close %d" % code
        return "eof" if c.eof else "open"

    async def auth(self, c, user="h0", device="", token=None):
        id = self.nid()
        await self.send(c, [self.pbf(c, id=id, auth={
            "token": token or self.tokens[user], "device": device})])
        self.count("Auth")
        fs = await self.reply(c, id, 10)
        return self.answer(fs)

    async def signed_in(self, user=None, port=None, split=None,
                        rcvbuf=None, device=""):
        user = user or self.rng.choice(HOSTILE_USERS[:6])
        for _ in range(3):
            c = await self.upgraded(port, split, rcvbuf)
            if c is None:
                return None
            a = await self.auth(c, user, device)
            if a == "auth_ok":
                return c
            self.drop(c)
            if a != "Error UNAVAILABLE":
                self.outcome("Auth", a, "auth_ok")
                return None
            await asyncio.sleep(0.3)
        return None

    # -- the loop

    async def start(self):
        self.tasks = [asyncio.ensure_future(self._worker(i))
                      for i in range(self.workers)]

    async def _worker(self, i):
        names = sorted(SCENARIOS)
        weights = [SCENARIOS[n][1] for n in names]
        while not self.stop.is_set():
            name = self.rng.choices(names, weights)[0]
            fn = SCENARIOS[name][0]
            self.scenarios[name] += 1
            try:
                await asyncio.wait_for(fn(self), SCENARIO_TIMEOUT)
            except asyncio.TimeoutError:
                self.errors["%s: timeout" % name] += 1
            except (Closed, OSError, ConnectionError, EOFError) as e:
                self.errors["%s: %s" % (name, type(e).__name__)] += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:      # a bug of the scenario must show
                self.errors["%s: %r" % (name, e)] += 1
            await asyncio.sleep(self.rng.uniform(0.05, 0.4))

    async def finish(self):
        self.stop.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.wait(self.tasks, timeout=5) if self.tasks else None
        for c in list(self.conns):
            c.close()
        self.conns.clear()
        await asyncio.sleep(0.1)

    def report(self):
        return {
            "frames_by_kind": dict(sorted(self.sent.items())),
            "frames_total": sum(self.sent.values()),
            "scenarios": dict(sorted(self.scenarios.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "surprises": self.surprises,
            "client_errors": dict(sorted(self.errors.items())),
        }


# --------------------------------------------------------------------------
# scenarios: async fn(h)

async def sc_handshake_size(h):
    """An upgrade request of exactly 8 KiB (101) or one byte more (431)."""
    n = h.rng.choice((HANDSHAKE_MAX, HANDSHAKE_MAX + 1))
    c = await h.conn()
    try:
        st = await c.handshake(req=c.request(pad_to=n),
                               split=h.rng.random() < 0.7)
        h.count("handshake %d bytes" % n)
        h.outcome("handshake %d" % n, st,
                  101 if n <= HANDSHAKE_MAX else 431)
        if st == 101 and h.rng.random() < 0.5:
            c.start_reader()
            h.outcome("handshake %d then Auth" % n, await h.auth(c),
                      ("auth_ok", "Error UNAVAILABLE"))
    finally:
        h.drop(c)


BAD_HANDSHAKES = {
    "POST": dict(method="POST"),
    "HTTP/1.0": dict(version="HTTP/1.0"),
    "no Host": dict(drop="Host"),
    "no Upgrade": dict(drop="Upgrade"),
    "no Connection": dict(drop="Connection"),
    "version 12": dict(set=("Sec-WebSocket-Version", "12")),
    "bad key": dict(set=("Sec-WebSocket-Key", "not-base64-16")),
    "no colon": dict(extra=[("Broken header line", None)]),
    "ctl in target": dict(path="/\x01x"),
    "two keys": dict(extra=[("Sec-WebSocket-Key",
                             "dGhlIHNhbXBsZSBub25jZQ==")]),
    "binary junk": None,
}


async def sc_handshake_bad(h):
    what = h.rng.choice(sorted(BAD_HANDSHAKES))
    spec = BAD_HANDSHAKES[what]
    c = await h.conn()
    try:
        if spec is None:
            req = h.rng.randbytes(h.rng.randint(1, 3000)) + b"\r\n\r\n"
        else:
            base = c.request()
            lines = base.decode("latin-1").split("\r\n")
            first, hdrs = lines[0], [l for l in lines[1:] if l]
            if "method" in spec:
                first = first.replace("GET", spec["method"], 1)
            if "version" in spec:
                first = first.replace("HTTP/1.1", spec["version"])
            if "path" in spec:
                first = "GET %s HTTP/1.1" % spec["path"]
            if "drop" in spec:
                hdrs = [l for l in hdrs
                        if not l.lower().startswith(spec["drop"].lower()
                                                    + ":")]
            if "set" in spec:
                k, v = spec["set"]
                hdrs = [l for l in hdrs if not l.lower().startswith(
                    k.lower() + ":")] + ["%s: %s" % (k, v)]
            for k, v in spec.get("extra", ()):
                hdrs.append(k if v is None else "%s: %s" % (k, v))
            req = ("\r\n".join([first] + hdrs) + "\r\n\r\n").encode(
                "latin-1")
        st = await c.handshake(req=req, split=h.rng.random() < 0.7)
        h.count("handshake bad: %s" % what)
        h.outcome("handshake bad: %s" % what, st)
        if st == 101:
            h.surprises.append("handshake bad: %s got 101" % what)
    finally:
        h.drop(c)


async def sc_handshake_slow(h):
    """The upgrade request a few bytes at a time over up to ~3 s; then
    maybe abandoned half way."""
    c = await h.conn()
    try:
        req = c.request()
        cut = len(req) if h.rng.random() < 0.6 else h.rng.randint(
            1, len(req) - 1)
        step = h.rng.randint(1, 40)
        pause = h.rng.uniform(0.01, 0.08)
        for i in range(0, cut, step):
            await c.write(req[i:min(cut, i + step)])
            await asyncio.sleep(pause)
        h.count("handshake slow")
        if cut == len(req):
            st = await c.read_response(5)
            h.outcome("handshake slow", st, 101)
        else:
            h.outcome("handshake slow", "abandoned")
    finally:
        h.drop(c)


async def sc_split_handshake_then_bad(h):
    """The upgrade request in two reads and, behind it in the second
    write, a frame that makes the server close (a bad token, a NUL in the
    token, frames over im_rate) and more frames: the close must not free
    the handshake buffer the parser still walks."""
    c = await h.conn()
    try:
        what = h.rng.choice(("bad token", "nul token", "pings over rate",
                             "garbage token"))
        tok = h.tokens["h2"]
        if what == "bad token":
            behind = [h.pbf(c, id=7, auth={"token": tok[:-6] + (
                "AAAAAA" if tok[-6:] != "AAAAAA" else "BBBBBB")})]
        elif what == "nul token":
            behind = [h.pbf(c, id=7, auth={"token": tok + "\u0000x"})]
        elif what == "garbage token":
            behind = [h.pbf(c, id=7, auth={"token": "v4.public." + "A" * (
                h.rng.randint(1, 300))})]
        else:
            # a burst of 200 and as much owed again: cut off
            behind = [c.frame(OP_PING, b"p") for _ in range(450)]
        behind += [h.pbf(c, id=100 + i, ping={"ts_ms": i})
                   for i in range(20)]
        behind += [c.frame(OP_PING, b"behind")] * 5
        req = c.request()
        st = await c.handshake(req=req, behind=b"".join(behind),
                               first=h.rng.randint(1, len(req) - 1))
        h.count("split handshake + %s" % what)
        h.count("frames behind a split handshake", len(behind))
        if st == 101:
            c.start_reader()
            h.outcome("split handshake + %s" % what,
                      await h.closed_with(c, 5), ("close 1008", "close 1001"))
        else:
            h.outcome("split handshake + %s" % what, st, 101)
    finally:
        h.drop(c)


async def sc_tokens(h):
    kind = h.rng.choice(("8192", "8193", "junk 8192", "junk 8193",
                         "expired", "bad signature", "not a token",
                         "sub of 65"))
    c = await h.upgraded()
    if c is None:
        return
    try:
        if kind in ("8192", "8193"):
            tok = h.sized[int(kind)]
        elif kind.startswith("junk"):
            n = int(kind.split()[1])
            tok = "v4.public." + "Q" * (n - 10)
        elif kind == "expired":
            tok = h.tokens["expired"]
        elif kind == "sub of 65":
            tok = h.tokens["long sub"]
        elif kind == "bad signature":
            t = h.tokens["h1"]
            tok = t[:20] + ("x" if t[20] != "x" else "y") + t[21:]
        else:
            tok = h.rng.randbytes(40).hex()
        a = await h.auth(c, token=tok)
        h.count("Auth token %s" % kind)
        want = ("auth_ok", "Error UNAVAILABLE") if kind == "8192" else \
            "Error UNAUTHENTICATED"
        h.outcome("Auth token %s" % kind, a, want)
        if a == "Error UNAUTHENTICATED":
            h.outcome("Auth token %s, then" % kind,
                      await h.closed_with(c, 5), "close 1008")
    finally:
        h.drop(c)


async def sc_presence(h):
    """PresenceSub at and past im_presence_max, and in the range a fixed
    argv could not hold (13..17)."""
    n = h.rng.choice((0, 1, 13, 14, 15, 16, 17, 64, 199, 200, 201, 300,
                      "cumulative", "bad id"))
    c = await h.signed_in()
    if c is None:
        return
    try:
        if n == "cumulative":
            a = h.rng.randint(100, 200)
            lists = [["w%d" % i for i in range(a)],
                     ["x%d" % i for i in range(PRESENCE_MAX - a + 1)]]
        elif n == "bad id":
            lists = [["ok1", TOO_LONG, "ok2"]]
        else:
            lists = [["p%d" % i for i in range(n)]]
        for i, users in enumerate(lists):
            id = h.nid()
            await h.send(c, [h.pbf(c, id=id, presence_sub={
                "users": users})])
            kind = "PresenceSub %s%s" % (n, " #%d" % i if len(lists) > 1
                                         else "")
            h.count("PresenceSub %d users" % len(users))
            fs = await c.wait_frames(
                lambda s: (any(imtest.body(f) == "error"
                               for f in s.replies(id))
                           or len(s.replies(id)) >= max(1, len(users))), 15)
            fs = c.replies(id)
            got = h.answer(fs)
            if got == "presence":
                got = "presence x%d" % len(fs)
            if n == "cumulative":
                want = ("presence x%d" % len(users) if i == 0 else
                        "Error TOO_LARGE")
            elif n == "bad id" or n == 0:
                want = "Error BAD_FRAME"
            elif n > PRESENCE_MAX:
                want = "Error TOO_LARGE"
            else:
                want = "presence x%d" % n
            if got == "Error UNAVAILABLE":
                want = got
            h.outcome(kind, got, want)
            if c.eof:
                h.outcome(kind, "connection lost")
                break
    finally:
        h.drop(c)


async def sc_ids(h):
    """Ids of 64 (valid) and 65 characters; type of 64 and 65 bytes."""
    what = h.rng.choice(("to", "client_msg_id", "group", "device", "join",
                         "type", "sync after", "ack"))
    long = h.rng.random() < 0.5
    idv = TOO_LONG if long else LONG_USER
    n = 65 if long else 64
    if what == "device":
        c = await h.upgraded()
        if c is None:
            return
        try:
            a = await h.auth(c, "h3", device=idv)
            h.count("Auth device %d" % n)
            h.outcome("Auth device %d" % n, a,
                      ("Error BAD_FRAME", "Error UNAVAILABLE") if long
                      else ("auth_ok", "Error UNAVAILABLE"))
        finally:
            h.drop(c)
        return
    c = await h.signed_in()
    if c is None:
        return
    try:
        id = h.nid()
        if what == "to":
            f = h.pbf(c, id=id, send={"to": idv, "body": b"x",
                                      "client_msg_id": "c%d" % id})
            want = "Error BAD_FRAME" if long else "send_ack"
        elif what == "client_msg_id":
            f = h.pbf(c, id=id, send={"to": "h5", "body": b"x",
                                      "client_msg_id": idv})
            want = "Error BAD_FRAME" if long else "send_ack"
        elif what == "group":
            f = h.pbf(c, id=id, send={"group": idv, "body": b"x"})
            want = "Error BAD_FRAME" if long else "Error FORBIDDEN"
        elif what == "join":
            f = h.pbf(c, id=id, group_join={"group": idv})
            want = "Error BAD_FRAME" if long else "Error NOT_FOUND"
        elif what == "type":
            f = h.pbf(c, id=id, send={"to": "h5", "body": b"x",
                                      "type": "t" * n})
            want = "Error TOO_LARGE" if long else "send_ack"
        elif what == "sync after":
            f = h.pbf(c, id=id, sync={"after": "1" * n, "limit": 1})
            want = "Error BAD_FRAME"
        else:
            f = h.pbf(c, id=id, ack={"up_to": "9" * (n - 2) + "-1"})
            want = None
        await h.send(c, [f])
        h.count("%s %d" % (what, n))
        if want is None:
            return
        got = h.answer(await h.reply(c, id, 10))
        if got == "Error UNAVAILABLE":
            want = got
        h.outcome("%s %d" % (what, n), got, want)
    finally:
        h.drop(c)


async def sc_sync_limits(h):
    c = await h.signed_in()
    if c is None:
        return
    try:
        # a few entries of this user's own inbox, some large
        for i in range(h.rng.randint(0, 6)):
            await h.send(c, [h.pbf(c, id=h.nid(), send={
                "to": h.rng.choice(HOSTILE_USERS), "client_msg_id":
                "s%d" % h.nid(), "body": b"s" * h.rng.choice(
                    (10, 2000, 60000))})])
            h.count("Send (filling an inbox)")
        for _ in range(h.rng.randint(1, 4)):
            kind = h.rng.choice(("limit 0", "limit 1000", "limit 1001",
                                 "limit 4294967295", "before 0-0",
                                 "after max", "after bad",
                                 "before after"))
            req = {"limit": 0}
            if kind.startswith("limit"):
                req["limit"] = int(kind.split()[1])
            elif kind == "before 0-0":
                req["before"] = "0-0"
            elif kind == "after max":
                req["after"] = "18446744073709551615-18446744073709551615"
            elif kind == "after bad":
                req["after"] = "12-x"
            else:
                req["after"], req["before"] = "1-0", "99999999999999-0"
            id = h.nid()
            await h.send(c, [h.pbf(c, id=id, sync=req)])
            h.count("Sync %s" % kind)
            await c.wait_frames(lambda s: any(
                imtest.body(f) in ("sync_done", "error")
                for f in s.replies(id)), 15)
            fs = c.replies(id)
            end = [f for f in fs if imtest.body(f) in ("sync_done",
                                                       "error")]
            got = h.answer(end) if end else "nothing"
            n = sum(1 for f in fs if imtest.body(f) == "message")
            if n > 1000:
                h.surprises.append("Sync %s: %d entries" % (kind, n))
            want = ("Error BAD_FRAME" if kind == "after bad" else
                    ("sync_done", "Error UNAVAILABLE"))
            h.outcome("Sync %s" % kind, got, want)
            if c.eof:
                break
    finally:
        h.drop(c)


def _send_of(k, extra=0, to="h4"):
    return imtest.frame(id=9, send={"to": to, "body": b"b" * k,
                                    "client_msg_id": "f" + "x" * extra})


async def sc_frame_size(h):
    kind = h.rng.choice(("max", "max+1", "fragmented max", "fragmented "
                         "max+1", "huge length", "top bit"))
    c = await h.signed_in()
    if c is None:
        return
    try:
        if kind in ("max", "max+1"):
            size = MAX_FRAME + (kind == "max+1")
            data = exact_frame(size, _send_of)
            await h.send(c, [c.binary(data)], split=True)
            h.count("frame of %d bytes" % size)
            if kind == "max":
                got = h.answer(await h.reply(c, 9, 10))
                h.outcome("frame %s" % kind, got,
                          ("send_ack", "Error RATE_LIMITED",
                           "Error UNAVAILABLE"))
            else:
                h.outcome("frame %s" % kind, await h.closed_with(c),
                          "close 1009")
        elif kind.startswith("fragmented"):
            size = MAX_FRAME + kind.endswith("+1")
            data = exact_frame(size, _send_of)
            a, b = sorted(h.rng.sample(range(1, size - 1), 2))
            parts = [c.frame(OP_BINARY, data[:a], fin=False),
                     c.frame(OP_PING, b"between"),
                     c.frame(OP_CONT, data[a:b], fin=False),
                     c.frame(OP_CONT, data[b:])]
            await h.send(c, parts, split=True)
            h.count("fragmented message of %d bytes" % size, len(parts))
            if size == MAX_FRAME:
                got = h.answer(await h.reply(c, 9, 10))
                h.outcome("frame %s" % kind, got,
                          ("send_ack", "Error RATE_LIMITED",
                           "Error UNAVAILABLE"))
            else:
                h.outcome("frame %s" % kind, await h.closed_with(c),
                          "close 1009")
        else:
            hdr = (struct.pack("!BBQ", 0x82, 0xFF, (1 << 63) | 5)
                   if kind == "top bit" else
                   struct.pack("!BBQ", 0x82, 0xFF, 1 << 40))
            await c.write(hdr + b"\0\0\0\0" + b"x" * 100)
            h.count("frame header: %s" % kind)
            h.outcome("frame %s" % kind, await h.closed_with(c),
                      ("close 1002", "close 1009"))
    finally:
        h.drop(c)


async def sc_control(h):
    kind = h.rng.choice(("ping 125", "ping 126", "close 125", "close 126",
                         "pong 125", "ping 0"))
    c = await h.upgraded()
    if c is None:
        return
    try:
        op = {"ping": OP_PING, "pong": OP_PONG, "close": OP_CLOSE}[
            kind.split()[0]]
        n = int(kind.split()[1])
        if op == OP_CLOSE:
            payload = struct.pack("!H", 1000) + b"r" * (n - 2)
        else:
            payload = h.rng.randbytes(n)
        await h.send(c, [c.frame(op, payload)], split=True)
        h.count("control %s bytes" % kind)
        if kind in ("ping 125", "ping 0"):
            await c.wait_frames(lambda s: any(o == OP_PONG for _, o, _ in
                                              s.frames), 5)
            got = [p for _, o, p in c.frames if o == OP_PONG]
            h.outcome("control %s" % kind, "pong" if got and got[0] ==
                      payload else "no pong", "pong")
        elif n > 125:
            h.outcome("control %s" % kind, await h.closed_with(c),
                      "close 1002")
        elif op == OP_CLOSE:
            h.outcome("control %s" % kind, await h.closed_with(c),
                      "close 1000")
    finally:
        h.drop(c)


WS_DEFECTS = {
    "rsv1": (dict(rsv=4), "close 1002"),
    "rsv3": (dict(rsv=1), "close 1002"),
    "unmasked": (dict(mask=False), "close 1002"),
    "opcode 3": (dict(opcode=3), "close 1002"),
    "opcode 11": (dict(opcode=11), "close 1002"),
    "fragmented ping": (dict(opcode=OP_PING, fin=False), "close 1002"),
    "continuation first": (dict(opcode=OP_CONT), "close 1002"),
    "16-bit length for 5": (dict(length_form=16), "close 1002"),
    "64-bit length for 200": (dict(length_form=64, size=200),
                              "close 1002"),
    "text": (dict(opcode=OP_TEXT), "close 1003"),
    "close 1 byte": (dict(opcode=OP_CLOSE, payload=b"\x03"), "close 1002"),
    "close code 1005": (dict(opcode=OP_CLOSE,
                             payload=struct.pack("!H", 1005)), "close 1002"),
    "close code 999": (dict(opcode=OP_CLOSE,
                            payload=struct.pack("!H", 999)), "close 1002"),
    "close bad utf8": (dict(opcode=OP_CLOSE,
                            payload=struct.pack("!H", 1000) + b"\xc3\x28"),
                       "close 1007"),
    "data inside fragmented": ("special", "close 1002"),
}


async def sc_ws_defects(h):
    what = h.rng.choice(sorted(WS_DEFECTS))
    spec, want = WS_DEFECTS[what]
    authed = h.rng.random() < 0.5
    c = await (h.signed_in() if authed else h.upgraded())
    if c is None:
        return
    try:
        good = h.pbf(c, id=h.nid(), ping={"ts_ms": 1})
        if spec == "special":
            bad = (c.frame(OP_BINARY, b"\x08", fin=False)
                   + c.frame(OP_BINARY, b"\x08"))
        else:
            spec = dict(spec)
            op = spec.pop("opcode", OP_BINARY)
            size = spec.pop("size", 5)
            payload = spec.pop("payload", c.pb(ping={"ts_ms": 2})[:size]
                               if size <= 5 else b"z" * size)
            if op == OP_BINARY and size > 5:
                payload = b"z" * size
            bad = c.frame(op, payload, **spec)
        frames = [good, bad] + [good] * h.rng.randint(0, 3)
        await h.send(c, frames)
        h.count("ws defect: %s" % what)
        h.count("frames around a ws defect", len(frames) - 1)
        h.outcome("ws defect: %s" % what, await h.closed_with(c), want)
    finally:
        h.drop(c)


async def sc_pb_garbage(h):
    what = h.rng.choice(("random bytes", "empty frame", "server body",
                         "unknown field", "nul in to", "truncated",
                         "huge varint"))
    c = await h.signed_in() if h.rng.random() < 0.7 else await h.upgraded()
    if c is None:
        return
    try:
        id = h.nid()
        if what == "random bytes":
            data = h.rng.randbytes(h.rng.randint(1, 3000))
        elif what == "empty frame":
            data = c.pb(id=id)
        elif what == "server body":
            body = h.rng.choice(("auth_ok", "send_ack", "message",
                                 "sync_done", "presence", "error", "goaway",
                                 "ok"))
            data = c.pb(id=id, **{body: {}})
        elif what == "unknown field":
            data = c.pb(id=id, ping={"ts_ms": 3}) + b"\xf8\x07\x01"
        elif what == "nul in to":
            data = c.pb(id=id, send={"to": "h4\u0000x", "body": b"n"})
        elif what == "truncated":
            data = c.pb(id=id, send={"to": "h4", "body": b"t" * 50})[:-10]
        else:
            data = b"\x08" + b"\xff" * 12
        frames = [c.binary(data), h.pbf(c, id=id + 1, ping={"ts_ms": 4})]
        await h.send(c, frames)
        h.count("protobuf: %s" % what)
        fs = await c.wait_frames(lambda s: any(
            f is not None and f.id == id + 1 for f in s.pbs()), 5)
        h.outcome("protobuf: %s" % what,
                  "answered, still open" if fs else
                  await h.closed_with(c, 1))
    finally:
        h.drop(c)


async def sc_pre_auth(h):
    c = await h.upgraded()
    if c is None:
        return
    try:
        reqs = [dict(send={"to": "h4", "body": b"x"}),
                dict(sync={"limit": 5}), dict(presence_sub={"users": ["h1"]}),
                dict(group_join={"group": "hg"}), dict(ack={"up_to": "1-1"}),
                dict(typing={"to": "h1"})]
        chosen = h.rng.sample(reqs, h.rng.randint(1, len(reqs)))
        ids = [h.nid() for _ in chosen]
        await h.send(c, [h.pbf(c, id=i, **r) for i, r in zip(ids, chosen)])
        h.count("request before Auth", len(chosen))
        for i, r in zip(ids, chosen):
            kind = "before Auth: %s" % next(iter(r))
            fs = await h.reply(c, i, 5)
            h.outcome(kind, h.answer(fs), "Error UNAUTHENTICATED")
        h.outcome("Auth after requests before Auth", await h.auth(c),
                  ("auth_ok", "Error UNAVAILABLE"))
    finally:
        h.drop(c)


async def sc_garbage_after_auth(h):
    c = await h.upgraded()
    if c is None:
        return
    try:
        id = h.nid()
        auth = h.pbf(c, id=id, auth={"token": h.tokens["h5"]})
        junk = h.rng.randbytes(h.rng.randint(1, 5000))
        if h.rng.random() < 0.5:
            # a plausible frame header first
            junk = bytes([0x82, 0x80 | h.rng.randint(0, 125)]) + junk
        await c.write(auth + junk, split=h.rng.random() < 0.5)
        h.count("Auth")
        h.count("garbage after Auth")
        h.outcome("garbage after Auth", await h.closed_with(c, 8))
    finally:
        h.drop(c)


async def sc_mid_frame(h):
    """Close (FIN or RST) in the middle of a frame, of the handshake, or
    of a fragmented message."""
    where = h.rng.choice(("frame", "handshake", "fragments", "header"))
    c = await h.conn()
    try:
        req = c.request()
        if where == "handshake":
            await c.write(req[:h.rng.randint(1, len(req) - 1)], split=True)
        else:
            st = await c.handshake(req=req, split=h.rng.random() < 0.5)
            if st != 101:
                return
            if h.rng.random() < 0.5:
                c.start_reader()
                await h.auth(c, "h6")
            if where == "frame":
                f = h.pbf(c, id=1, send={"to": "h4", "body": b"m" * 3000})
                await c.write(f[:h.rng.randint(1, len(f) - 1)], split=True)
            elif where == "header":
                await c.write(bytes([0x82, 0xFE]))
            else:
                data = c.pb(id=1, send={"to": "h4", "body": b"m" * 300})
                await c.write(c.frame(OP_BINARY, data[:100], fin=False)
                              + c.frame(OP_CONT, data[100:200], fin=False))
        h.count("close mid-%s" % where)
        await asyncio.sleep(h.rng.choice((0, 0.01, 0.2)))
    finally:
        h.drop(c)


async def sc_rate_flood(h):
    kind = h.rng.choice(("frames", "pings", "bytes"))
    c = await h.signed_in()
    if c is None:
        return
    try:
        # over the burst (200 frames, 2 MiB) by as much again: cut off
        if kind == "frames":
            frames = [h.pbf(c, id=h.nid(), ping={"ts_ms": i})
                      for i in range(450)]
        elif kind == "pings":
            frames = [c.frame(OP_PING, b"f") for _ in range(450)]
        else:
            big = exact_frame(60000, lambda k, e=0: _send_of(k, e, "h6"))
            frames = [c.binary(big)] * 75
        await h.send(c, frames, split=h.rng.random() < 0.3)
        h.count("rate flood: %s" % kind, len(frames))
        h.outcome("rate flood: %s" % kind, await h.closed_with(c, 10),
                  ("close 1008", "eof", "close 1001"))
    finally:
        h.drop(c)


async def sc_slow_reader(h):
    """A client that stops reading, on the listener with a small send
    buffer, while another hostile user floods it with live messages and
    it asks for big Sync pages: its send queue fills, the server drops it."""
    victim = h.rng.choice(("h6", "h7"))
    c = await h.signed_in(victim, port=h.ports["A_slow"], rcvbuf=4096,
                          device="slow")
    if c is None:
        return
    # stop reading: nothing more is read from the socket
    if c._task is not None:
        c._task.cancel()
    c.writer.transport.pause_reading()
    try:
        s = await h.signed_in("h5")
        if s is None:
            return
        try:
            n = 0
            dropped = False
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not dropped:
                frames = [h.pbf(s, id=h.nid(), send={
                    "to": victim, "body": b"v" * 16000,
                    "client_msg_id": "v%d" % h.nid()}) for _ in range(4)]
                await h.send(s, frames)
                h.count("Send to a reader that stopped", 4)
                n += 4
                try:
                    await c.write(h.pbf(c, id=h.nid(), sync={
                        "limit": 1000}))
                    h.count("Sync by a reader that stopped")
                except Closed:
                    dropped = True
                    break
                await asyncio.sleep(0.25)
            h.outcome("slow reader", "dropped" if dropped else
                      "still connected after %d messages" % n)
        finally:
            h.drop(s)
    finally:
        h.drop(c)


async def sc_storm(h):
    """Connections in a burst: handshakes (split), some Auths, some left
    at once, some reset, some closed mid-way."""
    n = h.rng.randint(10, 30)
    port = h.port()
    conns = []
    try:
        for i in range(n):
            c = RawWs(h.rng, port)
            h.conns.add(c)
            conns.append(c)
            try:
                await c.open()
                st = await c.handshake(split=h.rng.random() < 0.5,
                                       timeout=5)
                h.count("storm handshake")
            except (Closed, OSError, asyncio.TimeoutError):
                continue
            if st == 101 and h.rng.random() < 0.5:
                await c.write(h.pbf(c, id=1, auth={
                    "token": h.tokens[h.rng.choice(HOSTILE_USERS[:6])],
                    "device": "storm%d" % h.rng.randint(0, 3)}))
                h.count("storm Auth")
            if h.rng.random() < 0.4:
                h.drop(c)
        await asyncio.sleep(h.rng.uniform(0, 0.5))
    finally:
        for c in conns:
            h.drop(c)


async def sc_sessions(h):
    """One user with im_max_sessions_per_user sessions, then one more."""
    user = "h7"
    conns = []
    try:
        got = collections.Counter()
        for i in range(MAX_SESSIONS + 1):
            c = await h.upgraded(split=False)
            if c is None:
                continue
            conns.append(c)
            got[await h.auth(c, user, device="d%d" % i)] += 1
        h.count("Auth (one user, %d sessions)" % (MAX_SESSIONS + 1),
                MAX_SESSIONS + 1)
        h.outcome("sessions %d" % (MAX_SESSIONS + 1),
                  " ".join("%s x%d" % kv for kv in sorted(got.items())))
    finally:
        for c in conns:
            h.drop(c)


async def sc_groups(h):
    c = await h.signed_in(h.rng.choice(HOSTILE_USERS[:4]))
    if c is None:
        return
    try:
        ops = [("join hg", dict(group_join={"group": "hg"}),
                ("ok", "Error UNAVAILABLE")),
               ("join hgc", dict(group_join={"group": "hgc"}),
                ("Error FORBIDDEN", "ok", "Error UNAVAILABLE")),
               ("join nope", dict(group_join={"group": "nope"}),
                ("Error NOT_FOUND", "Error UNAVAILABLE")),
               ("leave nope", dict(group_leave={"group": "nope"}),
                ("Error NOT_FOUND", "Error UNAVAILABLE")),
               ("send hg", dict(send={"group": "hg", "body": b"g" * 100}),
                ("send_ack", "Error FORBIDDEN", "Error UNAVAILABLE")),
               ("typing hg", dict(typing={"group": "hg"}), None),
               ("typing bad", dict(typing={"to": TOO_LONG}),
                ("Error BAD_FRAME",)),
               ("second Auth", dict(auth={"token": h.tokens["h1"]}),
                ("auth_ok", "Error FORBIDDEN", "Error BAD_FRAME"))]
        for name, req, want in h.rng.sample(ops, h.rng.randint(2,
                                                               len(ops))):
            id = h.nid()
            await h.send(c, [h.pbf(c, id=id, **req)])
            h.count(name)
            if want is None:
                continue
            h.outcome(name, h.answer(await h.reply(c, id, 10)), want)
            if c.eof:
                break
    finally:
        h.drop(c)


async def sc_idle(h):
    """Connected and silent: before or after the handshake, for a while."""
    c = await h.conn()
    try:
        if h.rng.random() < 0.5:
            st = await c.handshake(split=True)
            h.count("handshake then silence")
            if st == 101:
                c.start_reader(answer_pings=False)
        else:
            h.count("silent TCP connection")
        await asyncio.sleep(h.rng.uniform(0.5, 6))
    finally:
        h.drop(c)


SCENARIOS = {
    "handshake size": (sc_handshake_size, 3),
    "handshake bad": (sc_handshake_bad, 2),
    "handshake slow": (sc_handshake_slow, 1),
    "split handshake + bad": (sc_split_handshake_then_bad, 3),
    "tokens": (sc_tokens, 2),
    "presence": (sc_presence, 3),
    "ids": (sc_ids, 3),
    "sync limits": (sc_sync_limits, 2),
    "frame size": (sc_frame_size, 3),
    "control frames": (sc_control, 2),
    "ws defects": (sc_ws_defects, 3),
    "protobuf garbage": (sc_pb_garbage, 2),
    "before Auth": (sc_pre_auth, 2),
    "garbage after Auth": (sc_garbage_after_auth, 2),
    "close mid-frame": (sc_mid_frame, 2),
    "rate flood": (sc_rate_flood, 1),
    "slow reader": (sc_slow_reader, 1),
    "storm": (sc_storm, 1),
    "sessions": (sc_sessions, 1),
    "groups": (sc_groups, 2),
    "idle": (sc_idle, 1),
}
