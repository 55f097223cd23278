"""Requests that cost Redis far more than the client paid for, and a
catch-up that a cursor at the end of the id space must not break.

    Sync        one in flight per session, none read from Redis while half
                of im_send_queue waits, pages sized by the room left: a
                client that stops reading and fires Syncs makes Redis ship
                about nothing
    group Send  the entry stored once per member counts against the
                sender's im_rate bytes
    cursor MAX  an Ack up_to the greatest id: nothing can come after, the
                catch-up is done without asking Redis for the impossible

Redis is measured with INFO (total_net_output_bytes, used_memory,
total_error_replies) and read directly; the bounds follow from the
configuration.  Waits are bounded; nothing asserts that something was
fast."""

import asyncio
import time

from imchat import (RawChat, close_all, id_key, inbox_key, login, next_id,
                    redis_cmd, xlen, xrange, xrange_ids)
from imgroup import make_group, send_group, sync_page
from imtest import (OP_BINARY, OP_CLOSE, OP_PING, body, decode, error_code,
                    frame, load_pb, run, ws_frame)


KIB = 1024
MIB = 1024 * 1024
SEND_QUEUE = 256 * KIB          # im_send_queue's default
MAX_ID = "18446744073709551615-18446744073709551615"


def info(redis, section, field):
    """An integer field of INFO <section>."""
    for line in redis_cmd(redis, "INFO", section).decode().splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise AssertionError("no %s in INFO %s" % (field, section))


def output_bytes(redis):
    return info(redis, "stats", "total_net_output_bytes")


def settled_output(redis, quiet=16 * KIB, rounds=4, interval=0.25,
                   timeout=20):
    """total_net_output_bytes once it grew by less than `quiet` bytes in
    each of `rounds` intervals in a row (our INFO replies and the
    heartbeats are a few hundred bytes; a page of entries is far more)."""
    deadline = time.monotonic() + timeout
    last, calm = output_bytes(redis), 0
    while time.monotonic() < deadline:
        time.sleep(interval)
        v = output_bytes(redis)
        calm = calm + 1 if v - last < quiet else 0
        last = v
        if calm >= rounds:
            return v
    raise AssertionError("Redis's output did not settle in %ds" % timeout)


def stored_entry(to, size, frm="alice"):
    """A stored im.Message of `size` body bytes, as the inbox holds it."""
    m = load_pb().Message()
    setattr(m, "from", frm)
    m.to = to
    m.body = b"x" * size
    return m.SerializeToString()


def read_replies(c, ids, timeout=60):
    """Read c (a RawChat) until every id in `ids` has its terminal reply
    (SyncDone or Error): ({id: terminal frame}, {id: Message count})."""
    want = set(ids)
    done, pages = {}, {}
    deadline = time.monotonic() + timeout
    while not want <= set(done):
        fin, op, payload = c.recv_frame(max(0.01,
                                            deadline - time.monotonic()))
        if op == OP_CLOSE:
            raise AssertionError("closed by the server: %r (%d of %d "
                                 "answered)" % (payload, len(done),
                                                len(want)))
        if op != OP_BINARY:
            assert op == OP_PING, (op, payload)
            continue
        f = decode(payload)
        if f.id not in want:
            continue
        assert f.id not in done, "a frame after the end: %s" % f
        if body(f) == "message":
            pages[f.id] = pages.get(f.id, 0) + 1
        else:
            done[f.id] = f
    return done, pages


# --------------------------------------------------------------------------
# 3. Sync amplification

ENTRIES = 400
ENTRY_BODY = 8 * KIB
BURST = 190                     # Syncs in one write, in im_rate's burst


def test_sync_burst_from_a_client_that_does_not_read(nginx, redis):
    """bob's inbox holds 400 entries of 8 KiB.  A session of bob stops
    reading (a 4 KiB receive buffer it never empties): the replay after
    Auth fills its send queue to about half of im_send_queue and pauses.
    Then the client sends 190 Syncs (limit 1000) in one write.

    The fixed server has one Sync in flight per session (another gets
    Error{RATE_LIMITED, "one Sync at a time"} with its id), answers a
    Sync at once with SyncDone{more=true, last=""} and reads nothing from
    Redis while half of im_send_queue is waiting, and sizes a page by the
    room left in the queue.  So Redis ships at most a page for the one
    Sync in flight and a replay page, each at most half of im_send_queue
    plus one entry (plus a little for INFO and heartbeats), where a
    server that reads a full page for each Sync ships ~22 MiB.  Once the
    client reads, every one of the 190 Syncs has exactly one answer of
    those kinds.  A reading client's two Syncs in one write: the second
    gets Error{RATE_LIMITED, "one Sync at a time"}, the first a page of at
    most half of im_send_queue, and a Sync after its SyncDone is served
    again.  And a client that reads, paging with Sync{after=last}
    one at a time, gets every entry exactly once, in inbox order."""
    n = nginx()
    entry = stored_entry("bob", ENTRY_BODY)
    for _ in range(ENTRIES):
        redis_cmd(redis, "XADD", inbox_key("bob"), "*", "m", entry)
    inbox = xrange_ids(redis, "bob")
    assert len(inbox) == ENTRIES

    c = RawChat(n.port, rcvbuf=4096)
    f = c.auth(n.token("bob"), device="stalled")
    assert body(f) == "auth_ok", f
    # the replay runs until half of the send queue waits, then pauses
    before = settled_output(redis)

    ids = [next_id() for _ in range(BURST)]
    c.send_raw(b"".join(
        ws_frame(OP_BINARY, frame(id=i, sync={"limit": 1000})
                 .SerializeToString()) for i in ids))
    after = settled_output(redis)
    shipped = after - before
    page = SEND_QUEUE // 2 + len(entry) + 64
    bound = 2 * page + 64 * KIB
    print("\nRedis shipped %d KiB for %d Syncs from a client that does not "
          "read (bound %d KiB)" % (shipped // KIB, BURST, bound // KIB))
    assert shipped < bound, (
        "Redis shipped %.1f MiB to the worker for %d Syncs from a client "
        "that reads nothing (bound: %d KiB, a Sync page and a replay page)"
        % (shipped / MIB, BURST, bound // KIB))

    # now it reads: each Sync has one answer, of the kinds described
    done, pages = read_replies(c, ids)
    kinds = {}
    for i in ids:
        t = done[i]
        if body(t) == "error":
            assert t.error.code == error_code("RATE_LIMITED"), t
            assert t.error.reason == "one Sync at a time", t
            assert i not in pages, t
            kinds["one at a time"] = kinds.get("one at a time", 0) + 1
        elif i not in pages:
            assert body(t) == "sync_done", t
            assert t.sync_done.more and t.sync_done.last == "", t
            kinds["queue half full"] = kinds.get("queue half full", 0) + 1
        else:
            assert body(t) == "sync_done", t
            assert t.sync_done.last in inbox, t
            kinds["page"] = kinds.get("page", 0) + 1
    print("answers: %s" % kinds)
    assert kinds.get("page", 0) <= 1, kinds
    c.close()

    # a client that reads, with nothing to replay (its cursor is at the
    # newest entry), sends two Syncs in one write: the first is in flight
    # when the second comes, which is refused with its id; once the first
    # is done, a third is served
    redis_cmd(redis, "HSET", "im:{u:bob}:cursor", "reader", inbox[-1])
    r = RawChat(n.port)
    f = r.auth(n.token("bob"), device="reader")
    assert body(f) == "auth_ok", f
    first, second, third = next_id(), next_id(), next_id()
    r.send_raw(b"".join(
        ws_frame(OP_BINARY, frame(id=i, sync={"limit": 1000})
                 .SerializeToString()) for i in (first, second)))
    done, pages = read_replies(r, [first, second])
    t = done[second]
    assert body(t) == "error", t
    assert t.error.code == error_code("RATE_LIMITED"), t
    assert t.error.reason == "one Sync at a time", t
    assert second not in pages, pages
    t = done[first]
    assert body(t) == "sync_done" and t.sync_done.more, t
    # a page holds at most the room of half the queue (at least one entry)
    assert 1 <= pages[first] <= max(1, (SEND_QUEUE // 2) // len(entry)), \
        pages
    assert t.sync_done.last == inbox[pages[first] - 1], t
    r.send_raw(ws_frame(OP_BINARY, frame(id=third, sync={
        "after": t.sync_done.last, "limit": 1000}).SerializeToString()))
    done, pages3 = read_replies(r, [third])
    t3 = done[third]
    assert body(t3) == "sync_done", t3
    assert t3.sync_done.last == inbox[pages[first] + pages3[third] - 1], t3
    r.close()

    async def pager():
        bob = await login(n, "bob", device="pager")
        got, after_id = [], ""
        for _ in range(2000):
            msgs, end, _ = await sync_page(bob, after=after_id, limit=1000)
            if msgs is None:
                # over im_rate while the queue is half full: ask later
                assert end.error.code == error_code("RATE_LIMITED"), end
                assert end.error.reason != "one Sync at a time", end
                await asyncio.sleep(0.2)
                continue
            got += msgs
            if end.last:
                assert end.last == msgs[-1].msg_id, (end, msgs[-1])
                after_id = end.last
            if not end.more:
                break
            if not msgs:
                # half of the queue waits: read (the Chat does), ask again
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("paging did not end: %d entries"
                                 % len(got))
        assert not bob.closed
        await bob.close()
        return got

    got = run(pager(), timeout=120)
    ids_got = [m.msg_id for m in got]
    assert len(set(ids_got)) == len(ids_got), "an entry came twice"
    assert ids_got == inbox, "paged %d entries, the inbox holds %d" % (
        len(ids_got), len(inbox))
    assert all(m.body == b"x" * ENTRY_BODY for m in got)


# --------------------------------------------------------------------------
# 4. group storage amplification

RATE_BYTES = 256 * KIB          # im_rate ... bytes=256k
MEMBERS = 200                   # and alice
BODY = 30000                    # of a group send
DIRECT_BODY = 60000
DIRECT = 5
GROUP_SENDS = 6


def used_memory(redis):
    return info(redis, "memory", "used_memory")


def test_group_sends_count_stored_bytes_against_im_rate(nginx, redis):
    """im_rate 100r/s burst=200 bytes=256k: a session's byte budget
    starts at its burst, 2 x 256 KiB, and grows back at 256 KiB/s (capped
    at the burst); the bytes a client sends are taken from it, and a
    frame that comes while it is negative is refused with
    Error{RATE_LIMITED} (ngx_stream_im_rate).  alice, in a group of 201
    (her and 200 others), first sends 5 direct messages of 60000 bytes to
    bob: a direct send costs only its own bytes, 300 KB in all, and every
    one is acknowledged (were each charged for its two stored copies too,
    900 KB, the last ones would be refused).  Then she sends 6 group
    messages of 30000 bytes, one after the other: their own 180 KB still
    fit the burst.

    The fixed server charges a group send's stored entry once per member
    to the sender's budget (ngx_stream_im_session_charge: 201 x ~30 KB,
    ~6 MB, some twenty seconds of budget), as a debt that refuses the
    next frames but does not close the connection.  So, with T the
    seconds since alice connected, a group send is accepted only while
    what was charged before it is at most the budget so far, 2 x 256 KiB
    + T x 256 KiB: at most 1 + budget / (201 x entry) of them are
    acknowledged (1, as the test goes), each later one gets
    Error{RATE_LIMITED} with its id, so does a Ping while the debt lasts,
    the session stays open, each member's inbox holds one entry per
    acknowledged send, and Redis's used_memory grows by at most about
    twice the entries that allows.  A server that charges only the
    frame's own bytes stores all 6 (~36 MB for 180 KB sent)."""
    n = nginx(server_directives="im_rate 100r/s burst=200 bytes=256k;")
    members = ["m%03d" % i for i in range(MEMBERS)]
    make_group(redis, "big", "alice", *members)
    users = 1 + MEMBERS

    async def go():
        t0 = time.monotonic()
        alice = await login(n, "alice")
        for i in range(DIRECT):
            await alice.send_ok("bob", b"d" * DIRECT_BODY, cmid="d%d" % i)

        mem0 = used_memory(redis)
        replies = []
        for i in range(GROUP_SENDS):
            replies.append(await send_group(alice, "big", b"g" * BODY,
                                            cmid="g%d" % i))
        t_sends = time.monotonic() - t0
        mem1 = used_memory(redis)
        ping = await alice.request(ping={"ts_ms": 7})
        t_ping = time.monotonic() - t0
        assert not alice.closed, "alice was disconnected"
        await close_all([alice])
        return replies, ping, t_sends, t_ping, mem1 - mem0

    replies, ping, t_sends, t_ping, grew = run(go(), timeout=60)

    entries = xrange(redis, "m000")
    assert entries, "no group message was stored"
    entry = len(entries[0][1].SerializeToString())
    per_send = users * entry
    budget = 2 * RATE_BYTES + t_sends * RATE_BYTES
    most = 1 + int(budget // per_send)
    acked = [f for f in replies if body(f) == "send_ack"]
    stored = [xlen(redis, m) for m in members]
    print("\n%d of %d group sends acked (at most %d allowed in %.1f s), "
          "each stores %d x %d bytes; Redis grew %.1f MiB"
          % (len(acked), GROUP_SENDS, most, t_sends, users, entry,
             grew / MIB))
    assert len(acked) <= most, (
        "%d of %d group sends of %d bytes to %d members were stored "
        "(%.1f MiB in Redis) where the byte budget allows %d"
        % (len(acked), GROUP_SENDS, BODY, users, grew / MIB, most))
    assert stored == [len(acked)] * MEMBERS, set(stored)
    assert xlen(redis, "alice") == DIRECT + len(acked)
    assert grew <= 2 * most * per_send, (grew, most, per_send)

    assert body(replies[0]) == "send_ack", replies[0]
    for f in replies[len(acked):]:
        assert body(f) == "error", f
        assert f.error.code == error_code("RATE_LIMITED"), f
    assert replies[:len(acked)] == acked, "an accepted send after a refused"
    # still in debt at the Ping (the budget cannot have grown back yet)
    if 2 * RATE_BYTES + t_ping * RATE_BYTES < len(acked) * per_send:
        assert body(ping) == "error", ping
        assert ping.error.code == error_code("RATE_LIMITED"), ping


def test_group_sends_are_not_charged_with_im_rate_off(nginx, redis):
    """The same group sends with `im_rate off`: nothing is counted, so
    every one is acknowledged and stored once per member, and the
    session's next frame is answered as usual."""
    n = nginx(server_directives="im_rate off;")
    members = ["m%03d" % i for i in range(MEMBERS)]
    make_group(redis, "big", "alice", *members)
    sends = 4

    async def go():
        alice = await login(n, "alice")
        replies = []
        for i in range(sends):
            replies.append(await send_group(alice, "big", b"g" * BODY,
                                            cmid="g%d" % i))
        await alice.ping(9)
        await close_all([alice])
        return replies

    replies = run(go(), timeout=60)
    assert [body(f) for f in replies] == ["send_ack"] * sends, replies
    assert {xlen(redis, m) for m in members} == {sends}
    assert xlen(redis, "alice") == sends


# --------------------------------------------------------------------------
# 5. a cursor at the greatest id

def error_replies(redis):
    return info(redis, "stats", "total_error_replies")


def test_device_with_cursor_at_the_greatest_id_is_not_left_deaf(nginx,
                                                                redis):
    """bob's device d1 acknowledges up to the greatest possible id,
    18446744073709551615-18446744073709551615 (the server does not check
    a cursor against the inbox), and signs in again; so does a second
    device d2 that never acknowledged.  alice then sends bob 3 messages.

    The fixed server treats d1's catch-up as done, since nothing can
    come after its cursor, without asking Redis for entries after the
    greatest id (a range Redis refuses: "invalid start ID"), so Redis
    refuses no request of the worker.  d1's session stays open and is
    sent nothing unasked (everything is at or before its cursor), a new
    Sync without `after` still returns its whole inbox, one with `after`
    = that id an empty page; d2 gets the inbox, then the live messages,
    in order.  (The old server sent the impossible range, took the error
    as the end of the replay and never marked the session caught up.)"""
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        for i in range(2):
            await alice.send_ok("bob", b"old %d" % i, cmid="old%d" % i)
        d1 = await login(n, "bob", device="d1")
        await d1.until(lambda: len(d1.live_messages()) >= 2, 10,
                       "d1's first replay")
        await d1.ack(MAX_ID)
        cursor = "im:{u:bob}:cursor"
        deadline = time.monotonic() + 10
        while redis_cmd(redis, "HGET", cursor, "d1") != MAX_ID.encode():
            assert time.monotonic() < deadline, "the Ack was not stored"
            await asyncio.sleep(0.05)
        await d1.close()

        errors = error_replies(redis)
        d1 = await login(n, "bob", device="d1")
        d2 = await login(n, "bob", device="d2")
        for i in range(3):
            await alice.send_ok("bob", b"new %d" % i, cmid="new%d" % i)
        want = [b"old 0", b"old 1", b"new 0", b"new 1", b"new 2"]
        await d2.until(lambda: len(d2.live_messages()) >= len(want), 10,
                       "d2's replay and live messages")
        assert [m.body for m in d2.live_messages()] == want

        inbox = xrange_ids(redis, "bob")
        msgs, end, _ = await sync_page(d1)
        assert msgs is not None, end
        assert [m.msg_id for m in msgs] == inbox, (msgs, inbox)
        assert [m.body for m in msgs] == want
        assert end.last == msgs[-1].cursor and not end.more, end
        msgs, end, _ = await sync_page(d1, after=MAX_ID)
        assert msgs == [] and end.last == "" and not end.more, end
        await d1.ping(5)
        assert not d1.closed and not d2.closed
        assert d1.live_messages() == [], d1.live_messages()
        refused = error_replies(redis) - errors
        await close_all([alice, d1, d2])
        return refused

    refused = run(go(), timeout=60)
    assert refused == 0, (
        "Redis refused %d requests of the worker after the device with "
        "the greatest cursor signed in: the catch-up asked for entries "
        "after the greatest id" % refused)


def test_replay_refused_by_redis_is_tried_again(nginx, redis):
    """bob signs in while his inbox key is not a stream (a string put
    there by hand), so Redis refuses the replay after AuthOk (WRONGTYPE).
    The key is deleted, and alice sends bob two messages.

    The fixed server does not take the refusal as the end of the
    catch-up: the next live message for the session starts the replay
    again, so bob, connected throughout, gets both messages, in order.
    A server that leaves the session waiting for a catch-up that never
    comes keeps it deaf: every later message only marks it as having
    more to replay."""
    n = nginx()
    redis_cmd(redis, "SET", inbox_key("bob"), "not a stream")
    errors = error_replies(redis)

    async def go():
        bob = await login(n, "bob")
        deadline = time.monotonic() + 10
        while error_replies(redis) == errors:
            assert time.monotonic() < deadline, "no replay was refused"
            await asyncio.sleep(0.05)
        redis_cmd(redis, "DEL", inbox_key("bob"))
        alice = await login(n, "alice")
        for i in range(2):
            await alice.send_ok("bob", b"m%d" % i, cmid="m%d" % i)
        await bob.until(lambda: len(bob.live_messages()) >= 2, 15,
                        "the messages after the refused replay")
        got = [m.body for m in bob.live_messages()]
        ids = [m.msg_id for m in bob.live_messages()]
        assert got == [b"m0", b"m1"], got
        assert ids == sorted(ids, key=id_key)
        assert not bob.closed
        await close_all([alice, bob])

    run(go(), timeout=60)
