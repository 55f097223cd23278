"""Helpers of the group, presence/typing and history tests (on top of
imchat): groups set up the admin way (redis), group requests, Presence and
Typing frames a Chat got, Sync pages, and a spy on the workers' route
channels.

    make_group()        SADD the members (and HSET meta open 1 if open)
    group_members()     the member set, straight from Redis
    send_group()        Send{group} -> the reply frame
    send_group_ok()     ... that must be a SendAck
    join() / leave()    GroupJoin / GroupLeave -> the reply frame
    expect_error()      a reply frame must be Error{code}
    presences()         Presence bodies a Chat got (by request id)
    typings()           Typing bodies a Chat got
    sync_page()         one Sync request -> (messages, SyncDone, frames)
    route_channel()     the route channel of a session id
    ChannelSpy          a plain Redis subscriber counting PUBLISHes
    place()             log in (user, device) on given workers

Every wait is bounded; nothing asserts that something was fast.
"""

import asyncio
import socket
import threading
import time

from imtest import body, error_code
from imchat import _resp, login_on, next_id, redis_cmd


def members_key(gid):
    return "im:{g:%s}:members" % gid


def meta_key(gid):
    return "im:{g:%s}:meta" % gid


def make_group(redis, gid, *members, open=False):
    """The admin contract: a group is its member set; open groups may be
    joined by anyone."""
    if members:
        redis_cmd(redis, "SADD", members_key(gid), *members)
    if open:
        redis_cmd(redis, "HSET", meta_key(gid), "open", "1")


def group_members(redis, gid):
    return {m.decode() for m in redis_cmd(redis, "SMEMBERS",
                                          members_key(gid))}


def sender(m):
    return getattr(m, "from")


def ids_of(msgs):
    return [m.msg_id for m in msgs]


async def send_group(chat, gid, data, cmid="", type="", timeout=10):
    return await chat.request(timeout, send={
        "group": gid, "body": data, "client_msg_id": cmid, "type": type})


async def send_group_ok(chat, gid, data, cmid="", type="", timeout=10):
    f = await send_group(chat, gid, data, cmid, type, timeout)
    assert body(f) == "send_ack", "Send to group %s: %s" % (gid, f)
    assert f.send_ack.client_msg_id == cmid, f
    return f.send_ack


async def join(chat, gid, timeout=10):
    return await chat.request(timeout, group_join={"group": gid})


async def leave(chat, gid, timeout=10):
    return await chat.request(timeout, group_leave={"group": gid})


def expect_error(f, code):
    assert body(f) == "error", "expected Error{%s}, got %s" % (code, f)
    assert f.error.code == error_code(code), \
        "expected Error{%s}, got %s" % (code, f)
    return f.error


def expect_ok(f, id=None):
    assert body(f) == "ok", "expected Ok, got %s" % f
    if id is not None:
        assert f.id == id, f
    return f


def presences(chat, id=0, user=None):
    """Presence bodies with frame id `id` (0: pushed transitions), in
    order, of one user if given."""
    return [f.presence for f in chat.frames
            if body(f) == "presence" and f.id == id
            and (user is None or f.presence.user == user)]


def typings(chat):
    """Typing bodies the chat got, in order (with their frame ids)."""
    return [f.typing for f in chat.frames if body(f) == "typing"]


def typing_frames(chat):
    return [f for f in chat.frames if body(f) == "typing"]


async def presence_sub(chat, users, timeout=10, error=None):
    """PresenceSub; waits for one answer per distinct user and returns
    (request id, {user: Presence}).  With error="CODE" the answer must be
    that Error instead (returned)."""
    id = next_id()
    await chat.post(id=id, presence_sub={"users": list(users)})

    def done():
        fs = chat.by_id.get(id, [])
        if any(body(f) == "error" for f in fs):
            return True
        return len(fs) >= max(1, len(set(users)))

    await chat.until(done, timeout, "answer to PresenceSub %s" % (users,))
    fs = chat.by_id[id]
    if error is not None:
        assert len(fs) == 1, fs
        return expect_error(fs[0], error)
    assert all(body(f) == "presence" for f in fs), fs
    return id, {f.presence.user: f.presence for f in fs}


async def sync_page(chat, after="", before="", limit=0, timeout=10):
    """Sync{after, before, limit}: (messages, SyncDone, frames) once the
    SyncDone (or an Error) with the request id came."""
    id = next_id()
    await chat.post(id=id, sync={"after": after, "before": before,
                                 "limit": limit})

    def done():
        return [f for f in chat.by_id.get(id, [])
                if body(f) in ("sync_done", "error")]

    end = (await chat.until(done, timeout, "SyncDone of %d" % id))[0]
    frames = list(chat.by_id[id])
    if body(end) == "error":
        return None, end, frames
    assert body(frames[-1]) == "sync_done", frames
    assert all(body(f) == "message" for f in frames[:-1]), frames
    return [f.message for f in frames[:-1]], end.sync_done, frames


def route_channel(session):
    """The route channel of a session id "<host>:<pid>:<n>:<device>"."""
    host, pid, _, _ = session.split(":")
    return "im:route:%s:%s" % (host, pid)


def inbox_entries(redis, user):
    """[(msg_id, stored im.Message)] of user's inbox."""
    from imchat import xrange
    return xrange(redis, user)


async def place(n, wanted):
    """Log in each (user, device, pid) of wanted on worker pid (None: any
    worker); returns the Chats in the same order."""
    out = []
    for user, device, pid in wanted:
        out.append(await login_on(n, user, device=device, want=pid))
    return out


async def quiet(seconds):
    """Let time pass so that what should not come has had the chance."""
    await asyncio.sleep(seconds)


class ChannelSpy:
    """A plain Redis connection SUBSCRIBEd to some channels (SSUBSCRIBEd,
    one by one, on a cluster: the module publishes sharded there); a
    thread keeps every message as (channel, payload bytes)."""

    def __init__(self, redis, channels):
        self.channels = list(channels)
        self.got = []
        self._lock = threading.Lock()
        self.sock = socket.create_connection(("127.0.0.1", redis.port),
                                             timeout=10)
        sharded = getattr(redis, "cluster", False)
        if sharded:
            cmds = [["SSUBSCRIBE", ch] for ch in self.channels]
        else:
            cmds = [["SUBSCRIBE"] + self.channels]
        out = b""
        for args in cmds:
            out += b"*%d\r\n" % len(args)
            for a in args:
                a = a.encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        self.fp = self.sock.makefile("rb")
        for _ in self.channels:
            r = _resp(self.fp)
            assert r[0] == (b"ssubscribe" if sharded else b"subscribe"), r
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            while True:
                r = _resp(self.fp)
                if isinstance(r, list) and r \
                        and r[0] in (b"message", b"smessage"):
                    with self._lock:
                        self.got.append((r[1].decode(), r[2]))
        except (OSError, ValueError, RuntimeError, IndexError):
            pass

    def messages(self, channel=None):
        with self._lock:
            return [(c, p) for c, p in self.got
                    if channel is None or c == channel]

    def count(self, channel):
        return len(self.messages(channel))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(2)


def parse_route_payload(payload):
    """A route channel message "<kind><msg id>\\n<origin>\\n<users>\\n<data>"
    as (kind, msg_id, origin session, [users]); a stored message's users
    come with the cursor before theirs and their own, "<user> <previous>
    <cursor> ...", which are left out."""
    head, origin, users, _ = payload.split(b"\n", 3)
    names = users.decode().split(" ")
    if head[:1] == b"m":
        names = names[0::3]
    return (chr(head[0]), head[1:].decode(), origin.decode(), names)


def wait_for(cond, timeout, what):
    """Poll a plain (non-async) condition from async code."""
    async def go():
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.1fs waiting for %s"
                                     % (timeout, what))
            await asyncio.sleep(0.02)
    return go()
