"""Hostile clients: regression tests of bugs found by reading the code
with an attacker's eye.  Each test names what the fixed server does; the
memory-safety ones are meant to run under the sanitizer pass as well
(t/sanitize.sh), where a use-after-free is an AddressSanitizer report in
error.log and fails the test.

    split handshake + failing Auth   the close frees the handshake buffer
                                     the parser still walks (ASan)
    PresenceSub of 14+ users         a fixed argv[16] in the Redis
                                     command builder
    Goaway that does not fit         reload: the session is finalized and
                                     its read handler goes on (ASan)
    Sync of 64 KiB entries           Redis asked for 1001 entries a page
    PresenceSub of an over-long list refused before the costly scan
    group Send / Typing fan-out      bytes stored per Send, members per
                                     Typing
    a flooding client                must not starve the others
    replies while closing            nothing after our close frame
    our close in a client's frame    the rest of that frame is not parsed
                                     as frames

Every loop is bounded in count and time; no assertion is about speed
(a bystander's Ping is waited for with a generous bound)."""

import asyncio
import socket
import struct
import threading
import time

import pytest

from imchat import (RawChat, StalledReader, close_all, inbox_key, login,
                    next_id, raw_auth, redis_cmd, xlen)
from imgroup import expect_error, members_key
from imtest import (LOG_LEVEL, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG,
                    RawClient, body, close_payload, decode, encode,
                    error_code, frame, free_port, load_pb, run, varint,
                    wait_until, ws_frame)


# --------------------------------------------------------------------------
# helpers

def close_frame(payload):
    """(code, reason) of a close frame's payload; (None, "") if empty."""
    if not payload:
        return None, ""
    assert len(payload) >= 2, payload
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


def until_close(c, timeout=10):
    """Frames from a RawClient up to the server's close frame:
    ([(opcode, payload)], (code, reason)); EOFError if the server hung
    up without one."""
    deadline = time.monotonic() + timeout
    got = []
    while True:
        fin, op, payload = c.recv_frame(max(0.01,
                                            deadline - time.monotonic()))
        assert fin, (op, payload)
        if op == OP_CLOSE:
            return got, close_frame(payload)
        got.append((op, payload))


def pbs(got):
    """The im.Frames among (opcode, payload) pairs."""
    return [decode(p) for op, p in got if op == OP_BINARY]


def goodbye(c, code=1000):
    """Answer the server's close frame; the server must then end TCP."""
    try:
        c.send_close(code)
    except OSError:
        pass
    assert c.wait_eof(10), "the server kept the connection after the close"


def wait_read(n, nbytes, since, fallback=0.3):
    """Wait until the worker has read a piece of nbytes (nginx's debug
    log says "recv: fd:N <nbytes> of ..."), so that what the client sends
    next comes in another read; without a debug log, a pause."""
    if LOG_LEVEL != "debug":
        time.sleep(fallback)
        return
    n.wait_log(r"recv: fd:\d+ %d of \d+" % nbytes, timeout=10, since=since)


def wire(*frames_):
    """One write of several WebSocket frames (ws_frame bytes or
    im.Frames, which go as binary frames)."""
    out = b""
    for f in frames_:
        out += f if isinstance(f, (bytes, bytearray)) else ws_frame(
            OP_BINARY, encode(f))
    return out


def raw_frames(data):
    """Parse the bytes a server sent into [(fin, opcode, payload)]; a
    trailing incomplete frame is returned as (None, None, rest)."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 2:
            out.append((None, None, data[i:]))
            break
        b0, b1 = data[i], data[i + 1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(data) - i < 4:
                out.append((None, None, data[i:]))
                break
            n, off = struct.unpack("!H", data[i + 2:i + 4])[0], 4
        elif n == 127:
            if len(data) - i < 10:
                out.append((None, None, data[i:]))
                break
            n, off = struct.unpack("!Q", data[i + 2:i + 10])[0], 10
        if len(data) - i < off + n:
            out.append((None, None, data[i:]))
            break
        out.append((bool(b0 & 0x80), b0 & 0x0F, data[i + off:i + off + n]))
        i += off + n
    return out


def read_to_eof(sock, timeout=15, most=64 << 20):
    """Every byte the peer sends until it closes, at most `most` bytes and
    `timeout` seconds: (bytes, how) with how "eof" (a FIN), "reset" or
    None (still open)."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < most:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, None
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, None


# --------------------------------------------------------------------------
# 1. the handshake buffer freed under the parser

def split_upgrade(n, c, behind, first=20):
    """The upgrade request in two reads: `first` bytes, then the rest with
    the frames `behind` it in the same write."""
    req = c.request()
    assert len(req) + len(behind) < 8192, "must all fit the handshake buffer"
    mark = n.log_mark()
    c.send_raw(req[:first])
    wait_read(n, first, mark)
    c.send_raw(req[first:] + behind)
    status, _ = c.read_response()
    assert status == 101, c.response


def pings(count, first_id=100):
    return [frame(id=first_id + i, ping={"ts_ms": i}) for i in range(count)]


@pytest.mark.parametrize("case", ["bad-token", "nul-in-token", "im_rate",
                                  "ws-pings-over-im_rate"])
def test_split_handshake_then_failing_frames(nginx, case):
    """The upgrade request arrives in two reads (so it is kept in the
    session's handshake buffer) and, behind it in the second read, a
    frame that makes the server close (an Auth with a bad token, an Auth
    with a NUL in its token, frames over im_rate) and more frames.  The
    close used to free the handshake buffer while the frame parser was
    still walking it (heap use-after-free).  Fixed: Error{UNAUTHENTICATED}
    then close 1008 "authentication failed" (or, over the rate, the rate's
    answers and close 1008 "rate limit exceeded"), nothing of what came
    behind is answered, no sanitizer report."""
    rate = case in ("im_rate", "ws-pings-over-im_rate")
    n = nginx("im_auth_timeout 30s; "
              + ("im_rate 1r/s burst=2;" if rate else ""))
    auth_id = 7
    tail = wire(*pings(20)) + ws_frame(OP_PING, b"behind") * 5
    if case == "bad-token":
        token = n.token("alice")
        token = token[:-6] + ("AAAAAA" if token[-6:] != "AAAAAA"
                              else "BBBBBB")
        behind = wire(frame(id=auth_id, auth={"token": token})) + tail
    elif case == "nul-in-token":
        behind = wire(frame(id=auth_id, auth={
            "token": n.token("alice") + "\u0000junk"})) + tail
    elif case == "im_rate":
        behind = tail
    else:
        behind = ws_frame(OP_PING, b"p") * 20 + wire(*pings(5))

    with RawClient(n.port) as c:
        split_upgrade(n, c, behind)
        got, close = until_close(c)
        goodbye(c)

    if case in ("bad-token", "nul-in-token"):
        fs = pbs(got)
        assert [op for op, _ in got] == [OP_BINARY], got
        assert body(fs[0]) == "error" and fs[0].id == auth_id, fs
        assert fs[0].error.code == error_code("UNAUTHENTICATED"), fs
        if case == "nul-in-token":
            assert fs[0].error.reason == "malformed token", fs
        assert close == (1008, "authentication failed"), close
    elif case == "im_rate":
        # burst 2: two Pongs, one refusal, then cut off
        fs = pbs(got)
        assert [body(f) for f in fs] == ["pong", "pong", "error"], fs
        assert [f.id for f in fs] == [100, 101, 102], fs
        assert fs[2].error.code == error_code("RATE_LIMITED"), fs
        assert close == (1008, "rate limit exceeded"), close
    else:
        # pings over the rate get no pong; past the burst, cut off
        assert got == [(OP_PONG, b"p")] * 2, got
        assert close == (1008, "rate limit exceeded"), close


# --------------------------------------------------------------------------
# 2. PresenceSub of more users than a fixed argv has room for

async def presence_answers(chat, users, timeout=20):
    """PresenceSub{users}: the frames answering it, once there is one per
    user (or an Error)."""
    id = next_id()
    await chat.post(id=id, presence_sub={"users": list(users)})

    def done():
        fs = chat.by_id.get(id, [])
        return (any(body(f) == "error" for f in fs)
                or len(fs) >= len(set(users)))

    await chat.until(done, timeout, "the answer to a PresenceSub of %d "
                     "users" % len(users))
    return id, chat.by_id[id]


@pytest.mark.parametrize("conf,count,refused", [
    ("", 14, False), ("", 200, False), ("", 201, True),
    ("im_presence_max 1000;", 1000, False),
    ("im_presence_max 1000;", 1001, True)],
    ids=["14", "200-max", "201", "1000-max", "1001"])
def test_presence_sub_at_and_over_im_presence_max(nginx, redis, conf, count,
                                                  refused):
    """A PresenceSub of 14 users or more overflowed a fixed argv[16] in the
    Redis command builder (UNAVAILABLE, a dead worker).  Fixed: up to
    im_presence_max users (200 by default; 1000 here) are answered with
    one Presence per user carrying the request id (the online one
    online), and nothing else; one more is Error{TOO_LARGE}; the worker
    lives on."""
    n = nginx(conf)

    async def go():
        online = await login(n, "u0007")
        c = await login(n, "watcher")
        users = ["u%04d" % i for i in range(count)]
        id, fs = await presence_answers(c, users)
        if refused:
            assert len(fs) == 1, fs[:3]
            expect_error(fs[0], "TOO_LARGE")
        else:
            assert all(body(f) == "presence" and f.id == id for f in fs), \
                [f for f in fs if body(f) != "presence"][:3]
            assert sorted(f.presence.user for f in fs) == users
            assert {f.presence.user for f in fs if f.presence.online} \
                == {"u0007"}
        # nothing more comes for it, and the worker still serves
        await c.ping()
        await online.ping()
        assert len(c.by_id[id]) == (1 if refused else count)
        await close_all([online, c])

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# 3. reload: a Goaway that does not fit the send queue

def test_reload_when_goaway_does_not_fit_the_send_queue(nginx, redis):
    """On reload each session gets a Goaway; a session whose send queue is
    within a few bytes of im_send_queue (a client that stopped reading)
    cannot take it.  That session was finalized and then its read
    handler went on with the freed connection (use-after-free, then a
    second close).  Fixed: that session is cut off (its TCP connection
    ends), the other sessions get their Goaway and are closed 1001 at
    its delay, the old worker exits, no sanitizer report, no alert."""
    port2 = free_port()
    sq = 2048
    n = nginx("im_send_queue 2k; im_max_frame 1k; im_rate off; "
              "im_drain_window 2s; im_auth_timeout 60s; "
              "listen 127.0.0.1:%d sndbuf=4k;" % port2, workers=1)
    old = set(n.worker_pids())
    others = [raw_auth(n, "other%d" % i) for i in range(3)]
    slow = StalledReader(n, port2)
    # the queue counts 2 bytes less than its limit, or 1 (the head pong
    # half out): a Goaway (5 to 8 bytes) does not fit
    slow.fill_to(sq - 2)
    n.reload()

    for c in others:
        deadline = time.monotonic() + 10
        while True:
            f = c.recv_pb(max(0.01, deadline - time.monotonic()))
            if body(f) == "goaway":
                assert f.id == 0 and f.goaway.reconnect_after_ms < 2000, f
                break
    assert slow.c.wait_eof(10), "the stalled client is still connected"
    for c in others:
        got, close = until_close(c, 10)
        assert close == (1001, "server restarting"), close
        goodbye(c)
    wait_until(lambda: not (set(n.worker_pids(all=True)) & old), 20,
               what="the old worker to exit")


# --------------------------------------------------------------------------
# 7. Sync: Redis asked for 1001 entries, whatever their size

def redis_pipeline(redis, commands, timeout=60):
    """Send commands (lists of arguments) over one connection, then read
    every reply; the replies (an error reply raises)."""
    from imchat import _resp
    out = []
    for args in commands:
        out.append(b"*%d\r\n" % len(args))
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    data = b"".join(out)
    with socket.create_connection(("127.0.0.1", redis.port),
                                  timeout=timeout) as s:
        f = s.makefile("rb")
        t = threading.Thread(target=s.sendall, args=(data,), daemon=True)
        t.start()
        replies = [_resp(f) for _ in commands]
        t.join(timeout)
    return replies


def stored_entry(frm, to, data, cmid=""):
    """An inbox entry as the send script stores it: a packed Message
    without msg_id and ts_ms."""
    m = load_pb().Message(to=to, body=data, client_msg_id=cmid)
    setattr(m, "from", frm)
    return m.SerializeToString()


def fill_inbox(redis, user, count, size, t0=1700000000000):
    """count entries of `size`-byte bodies in user's inbox, ids
    "<t0 + i>-0"; returns the ids."""
    ids = ["%d-0" % (t0 + i) for i in range(count)]
    cmds = [["XADD", inbox_key(user), ids[i], "m",
             stored_entry("alice", user, (b"%05d:" % i).ljust(size, b"x"),
                          "c%d" % i)] for i in range(count)]
    for i in range(0, count, 50):
        redis_pipeline(redis, cmds[i:i + 50])
    return ids


def redis_memory(redis):
    info = redis_cmd(redis, "INFO", "memory").decode()
    kv = dict(line.split(":", 1) for line in info.splitlines()
              if ":" in line)
    return int(kv["used_memory"]), int(kv["used_memory_peak"])


class MemoryWatch:
    """A thread sampling Redis's used_memory every 10 ms: .most."""

    def __init__(self, redis):
        self.redis = redis
        self.most = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                used, peak = redis_memory(self.redis)
                self.most = max(self.most, used, peak)
            except (OSError, RuntimeError, ValueError):
                pass
            self._stop.wait(0.01)

    def stop(self):
        self._stop.set()
        self._t.join(5)
        used, peak = redis_memory(self.redis)
        self.most = max(self.most, used, peak)
        return self.most


MiB = 1 << 20


def check_first_page(fs, ids):
    """The frames answering a Sync{} of the whole inbox: a first page
    (oldest first, ending with SyncDone{more}), or Error{RATE_LIMITED}
    ("one Sync at a time"): the messages' ids, None if refused."""
    if body(fs[-1]) == "error":
        assert len(fs) == 1, fs[:3]
        expect_error(fs[0], "RATE_LIMITED")
        return None
    assert body(fs[-1]) == "sync_done", fs[-1]
    assert all(body(f) == "message" for f in fs[:-1]), fs[:3]
    got = [f.message.msg_id for f in fs[:-1]]
    assert got == ids[:len(got)], got[:3]
    assert len(got) < len(ids), len(got)
    assert fs[-1].sync_done.more is True, fs[-1]
    assert fs[-1].sync_done.last == (got[-1] if got else ""), fs[-1]
    return got


def test_sync_asks_redis_for_what_a_page_can_hold(nginx, redis):
    """Sync read up to 1001 entries from Redis per request, whatever their
    size: with 64 KiB bodies that is ~64 MB a Sync, and 20 small Syncs
    took Redis from 72 MB to 1.25 GB and stalled the worker.  Fixed:
    what Redis is asked for is sized by bytes (a page holds about half of
    im_send_queue).  On an inbox of 300 x 64 KiB (~20 MB), 20 Syncs from
    20 sessions at once, and 20 back to back from one session, leave
    Redis's memory far below what 20 whole inboxes take (< 120 MB more
    than before; the baseline needs ~400 MB); each is answered with a
    first page ending with SyncDone{more} (or, the 2nd..20th of one
    session, Error{RATE_LIMITED} "one Sync at a time"); paging on with
    `after` gives every entry exactly once, in inbox order."""
    n = nginx("im_send_queue 1m; im_rate off; im_max_sessions_per_user 32;")
    ids = fill_inbox(redis, "bob", 300, 65536)
    # no replay after Auth: only the Syncs read the inbox
    for d in ["default"] + ["d%d" % i for i in range(20)]:
        redis_cmd(redis, "HSET", "im:{u:bob}:cursor", d, ids[-1])

    async def answered(chat, id):
        await chat.until(lambda: [f for f in chat.by_id.get(id, [])
                                  if body(f) in ("sync_done", "error")],
                         120, "the answer to Sync %d" % id)
        return chat.by_id.pop(id)

    async def go():
        bob = await login(n, "bob")
        devices = [await login(n, "bob", device="d%d" % i)
                   for i in range(20)]
        other = await login(n, "carol")
        base, _ = redis_memory(redis)
        watch = MemoryWatch(redis)
        # 20 sessions, one Sync each, at once; then one session, 20
        one = [await d.post(sync={}) for d in devices]
        many = [await bob.post(sync={}) for _ in range(20)]
        # another user is served meanwhile
        await other.ping(timeout=60)
        pages = [check_first_page(await answered(d, i), ids)
                 for d, i in zip(devices, one)]
        pages += [check_first_page(await answered(bob, i), ids)
                  for i in many]
        most = await asyncio.to_thread(watch.stop)
        print("\nRedis used_memory %.1f MB before the 40 Syncs, at most "
              "%.1f MB during" % (base / MiB, most / MiB))
        assert all(p is not None for p in pages[:20]), pages[:20]
        assert any(pages), "no Sync got a message"
        assert most - base < 120 * MiB, (
            "40 Syncs took Redis from %.1f MB to %.1f MB"
            % (base / MiB, most / MiB))

        # paging on from `last` yields every entry once, in order
        seen, after = [], ""
        for _ in range(1000):
            id = await bob.post(sync={"after": after})
            fs = await answered(bob, id)
            assert body(fs[-1]) == "sync_done", fs[-1]
            page = [f.message for f in fs[:-1]]
            seen += [m.msg_id for m in page]
            for m in page:
                k = int(m.msg_id.split("-")[0]) - 1700000000000
                assert m.body == (b"%05d:" % k).ljust(65536, b"x")
            done_ = fs[-1].sync_done
            if not done_.more:
                break
            if not page:
                # the queue was half full: read on, then ask again
                assert done_.last == "", done_
                await asyncio.sleep(0.05)
                continue
            assert done_.last == page[-1].msg_id, done_
            after = done_.last
        assert seen == ids
        await close_all([bob, other] + devices)

    run(go(), timeout=300)


# --------------------------------------------------------------------------
# 8. PresenceSub: the over-long list is refused before the costly part

def x_list(id, entries):
    """The bytes of Frame{id, PresenceSub{users: ["x"] * entries}}."""
    sub = b"\x0a\x01x" * entries
    return b"\x08" + varint(id) + b"\x92\x01" + varint(len(sub)) + sub


def more_connections(n, count=4096):
    """Start nginx n (made with start=False) with a bigger
    worker_connections than the harness's 1024."""
    n.conf = n.conf.replace("worker_connections 1024;",
                            "worker_connections %d;" % count)
    with open(n.conf_path, "w") as fp:
        fp.write(n.conf)
    return n.start()


def watch_sessions(n, token, count, user, batch=100):
    """count sessions of one user (one token, devices d0, d1, ...) that
    each watch `user`; set up a batch at a time."""
    out = []
    for b in range(0, count, batch):
        cs = [RawChat(n.port) for _ in range(min(batch, count - b))]
        ids = [next_id() for _ in cs]
        for k, (c, id) in enumerate(zip(cs, ids)):
            c.send_pb(frame(id=id, auth={"token": token,
                                         "device": "d%d" % (b + k)}))
        for c, id in zip(cs, ids):
            f = c.reply(id)
            assert body(f) == "auth_ok", f
        for c, id in zip(cs, ids):
            c.send_pb(frame(id=id, presence_sub={"users": [user]}))
        for c, id in zip(cs, ids):
            f = c.reply(id)
            assert body(f) == "presence" and f.presence.user == user, f
        out += cs
    return out


def test_over_long_presence_sub_is_refused_before_any_work(nginx, redis):
    """A PresenceSub's cost grew with its entries x the watchers of each
    listed user, and was paid before an over-long list was refused: with
    2500 sessions watching "x", a 16 MB frame listing "x" 5.5 million
    times kept the worker busy for ~20 s (the baseline: ~7 s with 900).
    Fixed: with those watchers present, a list of im_presence_max users
    is answered and one of im_presence_max + 1 is Error{TOO_LARGE} with
    its id; the 16 MB lists are refused at once, so a bystander's Ping on
    the same worker is answered meanwhile (a bounded wait: 10 s); and the
    watchers still watch: "x" signing in reaches them."""
    watchers_n, entries = 2500, 5500000
    n = more_connections(nginx(
        "im_max_frame 16m; im_send_queue 32m; im_rate off; "
        "im_max_sessions_per_user 5000; im_auth_timeout 120s;",
        workers=1, start=False))
    watchers = watch_sessions(n, n.token("w"), watchers_n, "x")
    flooder = raw_auth(n, "flooder")
    by = raw_auth(n, "bystander")

    # 16 MB frames, built by hand (protobuf would take seconds)
    assert decode(x_list(9, 3)) == frame(id=9, presence_sub={
        "users": ["x"] * 3})
    ids = [next_id() for _ in range(2)]
    flood = b"".join(ws_frame(OP_BINARY, x_list(i, entries),
                              mask_key=b"\0\0\0\0") for i in ids)
    t = threading.Thread(target=flooder.send_raw, args=(flood,),
                         daemon=True)
    t.start()
    # the bystander is answered while the flood is on
    time.sleep(0.5)
    id = next_id()
    by.send_pb(frame(id=id, ping={"ts_ms": 3}))
    f = by.reply(id, timeout=10)
    assert body(f) == "pong", f
    for i in ids:
        expect_error(flooder.reply(i, timeout=120), "TOO_LARGE")
    t.join(60)
    flooder.ping_pong()

    # at the limit and one past it
    users = ["x"] + ["u%d" % i for i in range(199)]
    id = next_id()
    flooder.send_pb(frame(id=id, presence_sub={"users": users}))
    got = [flooder.reply(id) for _ in users]
    assert sorted(f.presence.user for f in got) == sorted(users), got[:3]
    id = next_id()
    flooder.send_pb(frame(id=id, presence_sub={"users": ["x"] * 201}))
    expect_error(flooder.reply(id), "TOO_LARGE")
    flooder.ping_pong()

    # the watchers still watch
    x = raw_auth(n, "x")
    for c in (watchers[0], watchers[-1]):
        f = c.recv_pb(10)
        assert (body(f), f.id, f.presence.user, f.presence.online) == (
            "presence", 0, "x", True), f
    for c in watchers + [flooder, by, x]:
        c.close()


# --------------------------------------------------------------------------
# 9. group fan-out: bytes stored per Send, members scanned per Typing

GROUP_BYTES = 64 * MiB      # entry size x members a group Send may store
TYPING_MEMBERS = 1000       # the largest group Typing is relayed to


def group_entry_size(frm, gid, data, cmid):
    """The size of the entry a group Send stores in every member's inbox:
    the packed Message without msg_id and ts_ms."""
    m = load_pb().Message(group=gid, body=data, client_msg_id=cmid)
    setattr(m, "from", frm)
    return len(m.SerializeToString())


def body_for_entry(frm, gid, cmid, size):
    """A body that makes the stored entry exactly `size` bytes."""
    n = size - group_entry_size(frm, gid, b"", cmid)
    for k in range(n, max(0, n - 8), -1):
        if group_entry_size(frm, gid, b"b" * k, cmid) == size:
            return b"b" * k
    raise ValueError(size)


def big_group(redis, gid, members, first=()):
    """A group of `members` members: those in `first`, then m1, m2..."""
    names = list(first) + ["m%d" % i for i in range(members - len(first))]
    for i in range(0, len(names), 500):
        redis_cmd(redis, "SADD", members_key(gid), *names[i:i + 500])
    assert int(redis_cmd(redis, "SCARD", members_key(gid))) == members
    return names


@pytest.mark.parametrize("members,entry,stored", [
    (1024, 65536, True),            # exactly 64 MiB
    (1024, 65537, False),           # 1024 bytes over
    (1025, 65536, False),           # a member over
    (512, 131072, True),
    (512, 131073, False),
], ids=["1024x64KiB", "1024x(64KiB+1)", "1025x64KiB", "512x128KiB",
        "512x(128KiB+1)"])
def test_group_send_is_bounded_by_bytes_stored(nginx, redis, members,
                                               entry, stored):
    """A group Send stores its entry in every member's inbox: body size x
    members was unbounded (a 128 KiB body to a 2000-member group is
    256 MB in Redis from one frame).  Fixed: a Send whose entry size x
    member count exceeds 64 MiB is refused with Error{TOO_LARGE} and
    stores nothing; exactly 64 MiB is stored and acknowledged."""
    n = nginx("im_max_frame 256k; im_send_queue 512k; im_rate off; "
              "im_group_max_members 2000;")
    gid = "big"
    names = big_group(redis, gid, members, first=["alice"])
    data = body_for_entry("alice", gid, "g1", entry)
    assert group_entry_size("alice", gid, data, "g1") == entry
    assert (entry * members <= GROUP_BYTES) == stored

    async def go():
        alice = await login(n, "alice")
        f = await alice.request(30, send={"group": gid, "body": data,
                                          "client_msg_id": "g1"})
        if stored:
            assert body(f) == "send_ack", f
            for u in ("alice", names[1], names[-1]):
                assert xlen(redis, u) == 1, u
        else:
            expect_error(f, "TOO_LARGE")
            for u in ("alice", names[1], names[-1]):
                assert xlen(redis, u) == 0, u
        # the session goes on: a small group Send is stored
        f = await alice.request(30, send={"group": gid, "body": b"s",
                                          "client_msg_id": "g2"})
        assert body(f) == "send_ack", f
        await alice.close()

    run(go(), timeout=120)


def test_typing_is_relayed_to_groups_of_at_most_1000_members(nginx, redis):
    """A group Typing read the routes of every member (an unbounded scan
    per keystroke with im_group_max_members raised).  Fixed: Typing to a
    group of 1000 members reaches the online members; to a group of 1001
    it is not relayed (and no error: Typing has no reply)."""
    n = nginx("im_group_max_members 5000;", workers=1)
    big_group(redis, "g1000", TYPING_MEMBERS, first=["bob", "rcpt"])
    big_group(redis, "g1001", TYPING_MEMBERS + 1, first=["alice", "rcpt"])

    async def go():
        rcpt = await login(n, "rcpt")
        alice = await login(n, "alice")
        bob = await login(n, "bob")
        # alice's Typing (to 1001) reaches Redis before bob's (to 1000):
        # one worker, one command connection, in order; so once bob's
        # has come, alice's would have come before it
        await alice.post(typing={"group": "g1001"})
        await alice.ping()
        await bob.post(typing={"group": "g1000"})
        await rcpt.until(lambda: [f for f in rcpt.frames
                                  if body(f) == "typing"
                                  and f.typing.group == "g1000"], 20,
                         "Typing to the group of 1000")
        await bob.ping()
        await alice.ping()
        typing = [f.typing for f in rcpt.frames if body(f) == "typing"]
        assert [(t.group, getattr(t, "from")) for t in typing] == [
            ("g1000", "bob")], typing
        assert not alice.errors() and not bob.errors()
        await close_all([rcpt, alice, bob])

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# 10. a flooding client must not starve the others

class Flood:
    """A thread sending `chunk` over and over on a RawClient until
    stop() or `seconds`; the client never reads."""

    def __init__(self, c, chunk, seconds=30):
        self.c, self.chunk = c, chunk
        self.sent = 0
        self.error = None
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        try:
            self.c.sock.settimeout(None)
            while (not self._stop.is_set()
                   and time.monotonic() < self._deadline):
                self.c.sock.sendall(self.chunk)
                self.sent += len(self.chunk)
        except OSError as e:
            self.error = e

    def stop(self):
        self._stop.set()
        self._t.join(35)
        return self.sent


@pytest.mark.parametrize("what", ["ws-pongs", "im-pongs"])
def test_a_flooding_client_does_not_starve_the_others(nginx, what):
    """The session read handler re-posted itself to ngx_posted_events,
    which nginx drains in the same event loop turn: a client that keeps
    its socket full (small valid frames that need no answer: WebSocket
    pongs or im Pongs, im_rate off) kept the worker in that one handler,
    and nobody else was served.  Fixed (ngx_posted_next_events): while
    the flood goes on, another client's Ping on the same worker is
    answered (a bounded wait of 10 s), and so is the flooder's own Ping
    once it stops."""
    n = nginx("im_rate off; im_auth_timeout 60s;", workers=1)
    flooder = raw_auth(n, "flooder")
    by = raw_auth(n, "bystander")
    if what == "ws-pongs":
        one = ws_frame(OP_PONG, b"", mask_key=b"\0\0\0\0")
    else:
        one = ws_frame(OP_BINARY, encode(frame(pong={"ts_ms": 1})),
                       mask_key=b"\0\0\0\0")
    flood = Flood(flooder, one * ((4 << 20) // len(one)))
    try:
        # the flood is on: the worker has been reading it for a while
        wait_until(lambda: flood.sent >= (64 << 20) or flood.error, 20,
                   what="64 MB of flood sent")
        assert flood.error is None, flood.error
        id = next_id()
        by.send_pb(frame(id=id, ping={"ts_ms": 4}))
        f = by.reply(id, timeout=10)
        assert body(f) == "pong" and f.pong.ts_ms == 4, f
        assert flood.error is None, flood.error
    finally:
        sent = flood.stop()
    print("\n%d MB of %s sent" % (sent >> 20, what))
    flooder.ping_pong()
    by.ping_pong()
    flooder.close()
    by.close()


# --------------------------------------------------------------------------
# 12. nothing after our close frame

REQUESTS = {
    "send": lambda i: {"send": {"to": "sink", "body": b"late",
                                "client_msg_id": "late%d" % i}},
    "sync": lambda i: {"sync": {"limit": 5}},
    "presence_sub": lambda i: {"presence_sub": {"users": ["a", "b"]}},
}


def frames_after_close(data):
    """The frames a server sent after its first close frame, and that
    close frame's (code, reason); AssertionError if there is none."""
    fs = raw_frames(data)
    for k, (fin, op, payload) in enumerate(fs):
        if op == OP_CLOSE:
            return fs[k + 1:], close_frame(payload)
    raise AssertionError("no close frame in %r" % fs[-3:])


def round_trip(by):
    """A Send by the bystander: its SendAck comes back through the same
    Redis connection, after every earlier reply of the worker."""
    id = next_id()
    by.send_pb(frame(id=id, send={"to": "sink", "body": b"by"}))
    f = by.reply(id)
    assert body(f) == "send_ack", f


@pytest.mark.parametrize("kind", sorted(REQUESTS))
@pytest.mark.parametrize("how", ["reserved-opcode", "full-window",
                                 "im_rate-cut-off"])
def test_nothing_after_our_close_frame(nginx, redis, kind, how):
    """A request that needs Redis and, right behind it in the same write,
    something that makes the server close: a reserved opcode (close 1002,
    the connection is failed), the same while the client's receive window
    is full (the close frame waits in the queue), or frames over im_rate
    (close 1008, the server waits for the client's close).  Redis's reply
    came while the session was closing and was still queued and written,
    after the close frame, which RFC 6455 forbids.  Fixed: read to the end
    of the connection, the close frame is the last thing the server sent
    (its reply, if any, comes before it), every time (20 connections
    each)."""
    port2 = free_port()
    n = nginx(("im_rate 1000r/s burst=3;" if how == "im_rate-cut-off"
               else "im_rate off;")
              + " im_auth_timeout 60s; im_send_queue 64k; im_max_frame 16k;"
              " listen 127.0.0.1:%d sndbuf=4k;" % port2, workers=1)
    fill_inbox(redis, "sink", 3, 10)
    by = raw_auth(n, "bystander")
    bad = ws_frame(0x3, b"")
    for i in range(8 if how == "full-window" else 20):
        user = "u%d" % i
        if how == "full-window":
            s = StalledReader(n, port2, user)
            s.stall(30000)
            c = s.c
        else:
            c = raw_auth(n, user)
        req = ws_frame(OP_BINARY, encode(frame(id=1000 + i,
                                               **REQUESTS[kind](i))))
        if how == "im_rate-cut-off":
            time.sleep(0.02)            # the bucket is full again (3)
            c.send_raw(req + wire(*pings(6)))
            # the server waits for our close: Redis answers meanwhile
            got, close = until_close(c)
            assert close == (1008, "rate limit exceeded"), close
            round_trip(by)
            c.send_close(1000)
            data, how_ = read_to_eof(c.sock)
            after = raw_frames(c.buf + data)
        else:
            c.send_raw(req + bad)
            round_trip(by)
            data, how_ = read_to_eof(c.sock)
            after, close = frames_after_close(c.buf + data)
            assert close == (1002, "reserved opcode"), close
        assert how_, "the server did not end the connection"
        assert after == [], "after the close frame (%s, round %d): %r" % (
            how, i, [(op, p[:40]) for _, op, p in after])
        c.close()


# --------------------------------------------------------------------------
# 13. our close frame in the middle of a client's frame

# what the rest of the client's frame looks like, read as frames
BOGUS = {
    # 64-bit length, far over im_max_frame
    "huge-length": b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff",
    # RSV bits and a reserved opcode
    "reserved-bits": b"\xf3\x80\x00\x00\x00\x00",
    # a 30000-byte binary frame: it would swallow the close behind it
    "swallowing-length": b"\x82\xfe\x75\x30\x00\x00\x00\x00",
}


@pytest.mark.parametrize("rest", sorted(BOGUS))
@pytest.mark.parametrize("when", ["before-auth", "signed-in"])
def test_our_close_in_the_middle_of_a_client_frame(nginx, rest, when):
    """The server closes on its own (1008 "authentication timeout" before
    Auth; 1001 "idle timeout" when signed in) while the client is in the
    middle of a 40000-byte binary frame.  The close reset the frame
    parser, so the rest of that frame was parsed as frames: garbage
    (a protocol error, the connection dropped) or a header that swallowed
    the client's close frame (the server then timed out).  Fixed: the
    rest of the frame is read and dropped, the client's close frame right
    behind it completes the closing handshake, and the server ends TCP
    with a FIN (no reset), logging neither an invalid frame nor a close
    timeout."""
    if when == "before-auth":
        n = nginx("im_auth_timeout 1s;")
    else:
        n = nginx("im_auth_timeout 60s; im_ping_interval 1s; "
                  "im_idle_timeout 2s;")
    c = RawChat(n.port)
    if when == "signed-in":
        f = c.auth(n.token("alice"))
        assert body(f) == "auth_ok", f
    size, half = 40000, 20000
    payload = (b"\0" * half + BOGUS[rest]).ljust(size, b"\x82")
    data = ws_frame(OP_BINARY, payload, mask_key=b"\0\0\0\0")
    cut = len(data) - size + half
    c.send_raw(data[:cut])
    # the server gives up on us while we are inside that frame
    code, reason = c.recv_close(timeout=10)
    assert (code, reason) == ((1008, "authentication timeout")
                              if when == "before-auth"
                              else (1001, "idle timeout")), (code, reason)
    mark = n.log_mark()
    c.send_raw(data[cut:] + ws_frame(OP_CLOSE, close_payload(1000)))
    rest_, how = read_to_eof(c.sock, timeout=10)
    assert how == "eof", "the server ended the connection with %s" % how
    bad = n.find_log(r"\[info\] .*(invalid WebSocket frame|timed out in "
                     r"WebSocket close).*", since=mark)
    assert not bad, bad.group(0)
    c.close()
