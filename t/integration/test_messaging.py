"""Authenticated 1:1 messaging through real nginx workers and a real Redis:
live delivery across workers, replay from per-device cursors, dedup of
retried sends, every device of a user, Sync paging, the live/replay race,
slow readers, routes, and the Sends that are refused."""

import asyncio
import time

import pytest

from imtest import body, error_code, free_port, run, wait_until
from imchat import (RawChat, check_messages, close_all, cursor_key, id_key,
                    login, login_on, next_id, redis_cmd, routes_key,
                    session_pid, xlen, xrange, xrange_cursors,
                    xrange_ids)


def sender(m):
    return getattr(m, "from")


def ids_of(msgs):
    return [m.msg_id for m in msgs]


def ms_of(msg_id):
    return int(msg_id.split("-")[0])


def plausible_ts(ts):
    """A ts_ms of a message stored during this test (10 min of slack for
    clocks; not a timing assertion)."""
    return abs(int(ts) - int(time.time() * 1000)) < 600000


# --------------------------------------------------------------------------
# live delivery

def test_two_workers_exchange_messages(nginx, redis):
    n = nginx(workers=4)

    async def go():
        alice = await login(n, "alice")
        bob = await login_on(n, "bob", avoid={alice.pid})
        assert alice.pid != bob.pid
        assert {alice.pid, bob.pid} <= set(n.worker_pids())

        acks = []
        for i in range(5):
            acks.append(await alice.send_ok("bob", b"a->b %d" % i,
                                            cmid="ab%d" % i, type="text"))
        for i in range(5):
            await bob.send_ok("alice", b"b->a %d" % i, cmid="ba%d" % i,
                              type="img")

        await bob.until(lambda: len(bob.live_messages()) >= 5, 10,
                        "5 messages at bob")
        await alice.until(lambda: len(alice.live_messages()) >= 5, 10,
                          "5 messages at alice")
        await asyncio.sleep(0.2)

        got = bob.live_messages()
        check_messages(got, [b"a->b %d" % i for i in range(5)],
                       sender="alice", to="bob")
        assert [m.client_msg_id for m in got] == ["ab%d" % i
                                                 for i in range(5)]
        assert {m.type for m in got} == {"text"}
        assert not any(m.group for m in got)
        # one msg_id per message, in every inbox: SendAck's; ts_ms is its
        # millisecond part
        assert ids_of(got) == [a.msg_id for a in acks]
        for m, a in zip(got, acks):
            assert m.ts_ms == a.ts_ms == ms_of(a.msg_id), (m, a)
            assert plausible_ts(m.ts_ms), m

        got = alice.live_messages()
        check_messages(got, [b"b->a %d" % i for i in range(5)],
                       sender="bob", to="alice")
        assert {m.type for m in got} == {"img"}

        # the cursors the recipients saw are their inboxes' entry ids, and
        # each entry holds the message's one msg_id, the sender's too
        assert [m.cursor for m in bob.live_messages()] == [
            m.cursor for _, m in xrange(redis, "bob") if sender(m) == "alice"]
        for user in ("bob", "alice"):
            assert [m.msg_id for _, m in xrange(redis, user)
                    if sender(m) == "alice"] == [a.msg_id for a in acks]
        await close_all([alice, bob])

    run(go())


def test_many_pairs_across_four_workers(nginx):
    n = nginx(workers=4, listen="reuseport")     # spread by the kernel
    pairs, count = 40, 20

    async def go():
        receivers = await asyncio.gather(*(login(n, "r%d" % i)
                                           for i in range(pairs)))
        senders = await asyncio.gather(*(login(n, "s%d" % i)
                                         for i in range(pairs)))
        pids = {c.pid for c in receivers + senders}
        assert len(pids) >= 2, "all %d sessions on one worker" % (2 * pairs)
        crossing = sum(1 for s, r in zip(senders, receivers)
                       if s.pid != r.pid)
        assert crossing > 0

        async def talk(i):
            s = senders[i]
            reqs = []
            for k in range(count):
                reqs.append(await s.post(send={
                    "to": "r%d" % i, "body": b"%d:%d" % (i, k),
                    "client_msg_id": "m%d-%d" % (i, k), "type": "t"}))
            acks = []
            for k, id in enumerate(reqs):
                f = await s.reply(id, 20)
                assert body(f) == "send_ack", f
                assert f.send_ack.client_msg_id == "m%d-%d" % (i, k)
                acks.append(f.send_ack.msg_id)
            assert sorted(acks, key=id_key) == acks
            assert len(set(acks)) == count

        await asyncio.gather(*(talk(i) for i in range(pairs)))

        for i, r in enumerate(receivers):
            await r.until(lambda: len(r.live_messages()) >= count, 20,
                          "%d messages at r%d" % (count, i))
        await asyncio.sleep(0.3)
        for i, r in enumerate(receivers):
            check_messages(r.live_messages(),
                           [b"%d:%d" % (i, k) for k in range(count)],
                           sender="s%d" % i, to="r%d" % i)
        # senders got nothing of their own back
        for s in senders:
            assert not s.live_messages()
        await close_all(receivers + senders)

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# replay and cursors

def test_offline_recipient_gets_everything_on_login(nginx, redis):
    n = nginx(workers=2)
    total = 15

    async def go():
        alice = await login(n, "alice")
        acks = []
        for i in range(total):
            acks.append(await alice.send_ok(
                "bob", b"msg %d" % i, cmid="c%d" % i,
                type=("text", "image", "")[i % 3]))
        assert xlen(redis, "bob") == total

        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= total, 10,
                        "the replay")
        await asyncio.sleep(0.2)
        got = bob.live_messages()
        check_messages(got, [b"msg %d" % i for i in range(total)],
                       sender="alice", to="bob")
        assert [m.client_msg_id for m in got] == ["c%d" % i
                                                 for i in range(total)]
        assert [m.type for m in got] == [("text", "image", "")[i % 3]
                                         for i in range(total)]
        assert ids_of(got) == xrange_ids(redis, "bob")
        assert ids_of(got) == [a.msg_id for a in acks]
        for m in got:
            assert m.ts_ms == ms_of(m.msg_id) and plausible_ts(m.ts_ms), m
        # replayed frames are server pushes: id 0
        assert all(f.id == 0 for f in bob.frames if body(f) == "message")
        await close_all([alice, bob])

    run(go())


def test_cursor_per_device(nginx, redis):
    n = nginx(workers=2)

    async def go():
        alice = await login(n, "alice")
        phone = await login(n, "bob", device="phone")
        for i in range(10):
            await alice.send_ok("bob", b"m%d" % i, cmid="k%d" % i)
        await phone.until(lambda: len(phone.live_messages()) >= 10, 10,
                          "10 messages")
        got = phone.live_messages()
        check_messages(got, [b"m%d" % i for i in range(10)])
        cut = got[5].cursor
        await phone.ack(cut)
        wait_until(lambda: redis_cmd(redis, "HGET", cursor_key("bob"),
                                     "phone") == cut.encode(), 10,
                   what="the cursor of bob/phone")
        await phone.close()

        # same device: only what comes after the cursor
        phone2 = await login(n, "bob", device="phone")
        await phone2.until(lambda: len(phone2.live_messages()) >= 4, 10,
                           "the replay after the cursor")
        # another device of the same user: everything
        tablet = await login(n, "bob", device="tablet")
        await tablet.until(lambda: len(tablet.live_messages()) >= 10, 10,
                           "the whole replay")
        await asyncio.sleep(0.3)
        check_messages(phone2.live_messages(),
                       [b"m%d" % i for i in range(6, 10)])
        assert ids_of(phone2.live_messages()) == ids_of(got[6:])
        check_messages(tablet.live_messages(),
                       [b"m%d" % i for i in range(10)])
        assert ids_of(tablet.live_messages()) == ids_of(got)

        # both continue live from there
        await alice.send_ok("bob", b"after", cmid="k-after")
        for c in (phone2, tablet):
            await c.until(lambda: c.live_messages()[-1].body == b"after",
                          10, "the live message")
        assert len(phone2.live_messages()) == 5
        assert len(tablet.live_messages()) == 11

        # the client may move its cursor anywhere, even backwards
        await tablet.ack(got[1].cursor)
        wait_until(lambda: redis_cmd(redis, "HGET", cursor_key("bob"),
                                     "tablet") == got[1].cursor.encode(),
                   10, what="the cursor of bob/tablet")
        await tablet.close()
        tablet = await login(n, "bob", device="tablet")
        await tablet.until(lambda: len(tablet.live_messages()) >= 9, 10,
                           "the replay")
        await asyncio.sleep(0.2)
        assert [m.body for m in tablet.live_messages()] == (
            [b"m%d" % i for i in range(2, 10)] + [b"after"])

        await close_all([alice, phone2, tablet])

    run(go())


def test_bad_ack_is_bad_frame(nginx, redis):
    n = nginx()

    async def go():
        bob = await login(n, "bob")
        for bad in ("", "abc", "1-", "-1", "1-2-3", "1.5-0", " 1-0"):
            f = await bob.request(ack={"up_to": bad})
            assert body(f) == "error", (bad, f)
            assert f.error.code == error_code("BAD_FRAME"), (bad, f)
        await bob.ping()
        assert redis_cmd(redis, "EXISTS", cursor_key("bob")) == 0
        await bob.close()

    run(go())


def test_inbox_is_capped_by_im_inbox_max(nginx, redis):
    """XADD MAXLEN ~ im_inbox_max: the inbox keeps at least the newest
    im_inbox_max entries and not much more (Redis trims whole nodes of
    100 entries); a replay sends what is kept, newest last."""
    n = nginx("im_inbox_max 10; im_rate off;")
    total = 250

    async def go():
        alice = await login(n, "alice")
        reqs = [await alice.post(send={"to": "bob", "body": b"%d" % i})
                for i in range(total)]
        for id in reqs:
            f = await alice.reply(id, 20)
            assert body(f) == "send_ack", f
        for user in ("bob", "alice"):
            k = xlen(redis, user)
            assert 10 <= k <= 10 + 100, (user, k)
        kept = xrange(redis, "bob")
        assert [m.body for _, m in kept] == [
            b"%d" % i for i in range(total - len(kept), total)]
        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= len(kept), 10,
                        "the replay")
        await asyncio.sleep(0.2)
        assert ids_of(bob.live_messages()) == [i for i, _ in kept]
        await close_all([alice, bob])

    run(go())


# --------------------------------------------------------------------------
# dedup

def test_retried_send_is_stored_once(nginx, redis):
    n = nginx(workers=2)

    async def go():
        alice = await login(n, "alice", device="phone")
        bob = await login(n, "bob")

        # a retry while the first is in flight, one after its ack, one from
        # a new connection of the same device, one from another device
        r1 = await alice.post(send={"to": "bob", "body": b"once",
                                    "client_msg_id": "dup-1"})
        r2 = await alice.post(send={"to": "bob", "body": b"once",
                                    "client_msg_id": "dup-1"})
        a1, a2 = (await alice.reply(r1)), (await alice.reply(r2))
        a3 = await alice.send_ok("bob", b"once", cmid="dup-1")
        await alice.close()
        alice2 = await login(n, "alice", device="phone")
        a4 = await alice2.send_ok("bob", b"once", cmid="dup-1")
        laptop = await login(n, "alice", device="laptop")
        a5 = await laptop.send_ok("bob", b"once", cmid="dup-1")
        acks = [a1.send_ack, a2.send_ack, a3, a4, a5]
        assert all(body(f) == "send_ack" for f in (a1, a2)), (a1, a2)
        assert len({a.msg_id for a in acks}) == 1, acks
        assert len({a.ts_ms for a in acks}) == 1, acks
        assert {a.client_msg_id for a in acks} == {"dup-1"}

        assert xlen(redis, "bob") == 1
        assert xlen(redis, "alice") == 1
        assert xrange_ids(redis, "alice") == [a1.send_ack.msg_id]

        # another client_msg_id is another message; so is an empty one
        # (no dedup without an id)
        other = await alice2.send_ok("bob", b"twice", cmid="dup-2")
        assert other.msg_id != a1.send_ack.msg_id
        e1 = await alice2.send_ok("bob", b"no id")
        e2 = await alice2.send_ok("bob", b"no id")
        assert e1.msg_id != e2.msg_id

        await bob.until(lambda: len(bob.live_messages()) >= 4, 10,
                        "4 messages at bob")
        await asyncio.sleep(0.3)
        assert [m.body for m in bob.live_messages()] == [
            b"once", b"twice", b"no id", b"no id"]
        assert xlen(redis, "bob") == 4
        ttl = int(redis_cmd(redis, "TTL", "im:{u:alice}:dedup:dup-1"))
        assert 0 < ttl <= 86400, ttl
        await close_all([alice2, laptop, bob])

    run(go())


# --------------------------------------------------------------------------
# devices

def test_every_device_gets_live_messages(nginx, redis):
    n = nginx(workers=4)

    async def go():
        devs = []
        for d in ("phone", "tablet", "laptop"):
            devs.append(await login_on(n, "bob", device=d,
                                       avoid={c.pid for c in devs}))
        assert len({c.pid for c in devs}) == 3
        alice = await login(n, "alice")
        acks = [await alice.send_ok("bob", b"to all %d" % i, cmid="x%d" % i)
                for i in range(5)]
        for c in devs:
            await c.until(lambda: len(c.live_messages()) >= 5, 10,
                          "5 messages on every device")
        await asyncio.sleep(0.3)
        inbox = xrange_ids(redis, "bob")
        for c in devs:
            check_messages(c.live_messages(),
                           [b"to all %d" % i for i in range(5)],
                           sender="alice", to="bob")
            assert ids_of(c.live_messages()) == inbox
        assert len(acks) == 5
        await close_all(devs + [alice])

    run(go())


@pytest.mark.parametrize("same_worker", [False, True],
                         ids=["other_worker", "same_worker"])
def test_sender_other_devices_get_the_copy(nginx, redis, same_worker):
    n = nginx(workers=4)

    async def go():
        phone = await login(n, "alice", device="phone")
        if same_worker:
            laptop = await login_on(n, "alice", device="laptop",
                                    want=phone.pid)
        else:
            laptop = await login_on(n, "alice", device="laptop",
                                    avoid={phone.pid})
        bob = await login(n, "bob")
        acks = [await phone.send_ok("bob", b"mine %d" % i, cmid="p%d" % i,
                                    type="text")
                for i in range(3)]

        await laptop.until(lambda: len(laptop.live_messages()) >= 3, 10,
                           "the sender's copies on the laptop")
        copies = laptop.live_messages()
        assert ids_of(copies) == [a.msg_id for a in acks]
        for m, a in zip(copies, acks):
            assert sender(m) == "alice" and m.to == "bob", m
            assert m.client_msg_id == a.client_msg_id and m.type == "text"
            assert m.ts_ms == a.ts_ms
        assert [m.body for m in copies] == [b"mine %d" % i for i in range(3)]

        # the sending session does not get its own messages: a message
        # from bob, stored after them, is the first thing it sees
        await bob.send_ok("alice", b"reply", cmid="r1")
        await phone.until(lambda: phone.live_messages(), 10, "bob's reply")
        await laptop.until(lambda: len(laptop.live_messages()) >= 4, 10,
                           "bob's reply on the laptop")
        await asyncio.sleep(0.3)
        assert [m.body for m in phone.live_messages()] == [b"reply"]
        assert [m.body for m in laptop.live_messages()] == (
            [b"mine %d" % i for i in range(3)] + [b"reply"])
        # bob got the three, with his own inbox's ids
        await bob.until(lambda: len(bob.live_messages()) >= 3, 10, "bob")
        assert ids_of(bob.live_messages()) == [
            i for i, m in xrange(redis, "bob") if sender(m) == "alice"]
        assert xrange_ids(redis, "alice") == [a.msg_id for a in acks] + [
            laptop.live_messages()[3].msg_id]
        await close_all([phone, laptop, bob])

    run(go())


# --------------------------------------------------------------------------
# Sync

def test_sync_paging(nginx, redis):
    n = nginx(workers=2)

    async def go():
        alice = await login(n, "alice")
        for i in range(12):
            await alice.send_ok("bob", b"s%d" % i, cmid="s%d" % i)
        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= 12, 10,
                        "the replay")
        inbox = xrange_cursors(redis, "bob")
        assert len(inbox) == 12

        pages, after = [], ""
        for _ in range(5):
            id = next_id()
            await bob.post(id=id, sync={"after": after, "limit": 5})
            done = await bob.until(
                lambda: [f for f in bob.by_id.get(id, [])
                         if body(f) == "sync_done"], 10, "SyncDone")
            done = done[0].sync_done
            frames = bob.by_id[id]
            # the messages come before SyncDone, all with the request id
            assert body(frames[-1]) == "sync_done", frames
            msgs = [f.message for f in frames[:-1]]
            assert all(body(f) == "message" for f in frames[:-1]), frames
            pages.append((msgs, done))
            if not done.more:
                break
            after = done.last

        assert [len(p) for p, _ in pages] == [5, 5, 2]
        assert [d.more for _, d in pages] == [True, True, False]
        assert [d.last for _, d in pages] == [inbox[4], inbox[9], inbox[11]]
        flat = [m for p, _ in pages for m in p]
        assert [m.cursor for m in flat] == inbox
        check_messages(flat, [b"s%d" % i for i in range(12)],
                       sender="alice", to="bob")

        # nothing after the end; the whole inbox with limit 0 (= default)
        f = await bob.request(sync={"after": inbox[-1], "limit": 5})
        assert body(f) == "sync_done", f
        assert (f.sync_done.last, f.sync_done.more) == ("", False)
        id = next_id()
        await bob.post(id=id, sync={})
        await bob.until(lambda: [f for f in bob.by_id.get(id, [])
                                 if body(f) == "sync_done"], 10, "SyncDone")
        assert [m.cursor for m in bob.messages(id)] == inbox
        assert bob.by_id[id][-1].sync_done.more is False

        # a page that ends exactly at the end says no more
        id = next_id()
        await bob.post(id=id, sync={"after": inbox[5], "limit": 6})
        await bob.until(lambda: [f for f in bob.by_id.get(id, [])
                                 if body(f) == "sync_done"], 10, "SyncDone")
        assert [m.cursor for m in bob.messages(id)] == inbox[6:]
        assert bob.by_id[id][-1].sync_done.more is False

        # Sync answers do not disturb the live stream: still 12 pushes
        assert len(bob.live_messages()) == 12

        for bad in ("x", "1-", "-", "12-a"):
            f = await bob.request(sync={"after": bad, "limit": 5})
            assert body(f) == "error", f
            assert f.error.code == error_code("BAD_FRAME"), f
        await close_all([alice, bob])

    run(go())


# --------------------------------------------------------------------------
# the live/replay race

def test_login_during_burst_sees_every_message_once(nginx, redis):
    n = nginx("im_rate off;", workers=4)
    total, window = 300, 5

    async def go():
        alice = await login(n, "alice")
        acked = []

        async def burst():
            for w in range(0, total, window):
                reqs = []
                for i in range(w, w + window):
                    reqs.append(await alice.post(send={
                        "to": "bob", "body": b"b%d" % i,
                        "client_msg_id": "b%d" % i}))
                for id in reqs:
                    f = await alice.reply(id, 20)
                    assert body(f) == "send_ack", f
                    acked.append(f.send_ack.msg_id)

        async def logins():
            devices = []
            for at in (30, 130, 230):
                await alice.until(lambda: len(acked) >= at, 20,
                                  "%d acks" % at)
                c = await login(n, "bob", device="d%d" % at)
                devices.append((c, len(acked)))
            return devices

        _, devices = await asyncio.gather(burst(), logins())
        # each login happened while the burst went on
        assert all(0 < k < total for _, k in devices), devices
        devices = [c for c, _ in devices]

        inbox = xrange_ids(redis, "bob")
        assert len(inbox) == total
        for c in devices:
            await c.until(lambda: len(c.live_messages()) >= total, 20,
                          "all %d messages at %s" % (total, c.session))
        await asyncio.sleep(0.3)
        for c in devices:
            got = c.live_messages()
            assert ids_of(got) == inbox, (
                "%s: %d messages, first difference at %s" % (
                    c.session, len(got),
                    next((k for k, (a, b) in enumerate(zip(ids_of(got),
                                                           inbox))
                          if a != b), min(len(got), len(inbox)))))
            assert [m.body for m in got] == [b"b%d" % i
                                             for i in range(total)]
        await close_all(devices + [alice])

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# slow readers

# the send queue under test; no rate limit in the way of the bursts
SMALL_QUEUE = "im_send_queue 64k; im_max_frame 16k; im_rate off;"


def raw_login_on(n, user, want=None, avoid=(), tries=80, port=None,
                 rcvbuf=None):
    """A RawChat signed in as user on the worker `want` (or not in avoid)."""
    for _ in range(tries):
        c = RawChat(port or n.port, rcvbuf=rcvbuf)
        f = c.auth(n.token(user))
        assert body(f) == "auth_ok", f
        pid = session_pid(f.auth_ok.session)
        if (want is None or pid == want) and pid not in avoid:
            c.session = f.auth_ok.session
            return c
        c.close()
    raise AssertionError("no raw session on the wanted worker")


def test_slow_reader_is_closed_others_keep_chatting(nginx, redis):
    # the slow client comes in through a listen socket with a small send
    # buffer, or the kernel would take megabytes on loopback before
    # nginx's queue ever fills
    port2 = free_port()
    n = nginx(SMALL_QUEUE + " listen 127.0.0.1:%d sndbuf=32k;" % port2,
              workers=2)
    body_ = b"z" * 15000

    slow = raw_login_on(n, "slow", port=port2, rcvbuf=16384)

    async def go():
        carol = await login_on(n, "carol", want=session_pid(slow.session))
        dave = await login(n, "dave")
        alice = await login(n, "alice")
        rounds = [0]

        async def chat(k):
            for _ in range(k):
                i = rounds[0]
                await carol.send_ok("dave", b"c%d" % i)
                await dave.send_ok("carol", b"d%d" % i)
                rounds[0] += 1

        # 2 MB (up to 4 MB if the socket buffers hold more) to a client
        # that reads nothing, with a chat next to it on the same worker
        sent = 0
        for i in range(280):
            await alice.send_ok("slow", body_, cmid="big%d" % i)
            sent += len(body_)
            if i % 20 == 0:
                await chat(1)
            if sent >= 2 * 1024 * 1024 and n.find_log(r"too slow"):
                break
        n.wait_log(r"\[info\] .*client is too slow, im_send_queue is full",
                   timeout=10)

        await chat(5)
        r = rounds[0]
        await carol.until(lambda: len(carol.live_messages()) >= r, 10,
                          "dave's messages at carol")
        await dave.until(lambda: len(dave.live_messages()) >= r, 10,
                         "carol's messages at dave")
        await asyncio.sleep(0.3)
        check_messages(carol.live_messages(), [b"d%d" % i for i in range(r)],
                       sender="dave", to="carol")
        check_messages(dave.live_messages(), [b"c%d" % i for i in range(r)],
                       sender="carol", to="dave")
        await carol.ping()
        await dave.ping()

        # the slow one is gone, and so is its route
        assert slow.wait_eof(10), "the slow client is still connected"
        wait_until(lambda: redis_cmd(redis, "HLEN", routes_key("slow")) == 0,
                   10, what="the slow client's route removed")
        await close_all([carol, dave, alice])

    run(go(), timeout=60)


@pytest.mark.parametrize("conf,total,size", [
    ("", 120, 3000),                # defaults: a 256k queue, 100 x 3 kB
    (SMALL_QUEUE, 120, 12000),
], ids=["defaults", "small_queue"])
def test_big_backlog_replays_to_a_fast_reader(nginx, redis, conf, total,
                                              size):
    """Replay is paced by the send queue: a reader that keeps up gets a
    backlog far larger than im_send_queue (a client closed as too slow
    must be able to come back and catch up from its cursor)."""
    n = nginx(conf, workers=1)
    body_ = b"q" * size

    async def go():
        alice = await login(n, "alice")
        for i in range(total):
            await alice.send_ok("bob", body_ + b"%d" % i, cmid="q%d" % i)
        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= total, 20,
                        "the replay of %d messages of %d bytes"
                        % (total, size))
        check_messages(bob.live_messages(),
                       [body_ + b"%d" % i for i in range(total)])
        await close_all([alice, bob])

    try:
        run(go(), timeout=40)
    finally:
        m = n.find_log(r"client is too slow")
        assert m is None, "a fast reader was closed as too slow during replay"


# --------------------------------------------------------------------------
# routes

def test_routes_follow_sessions(nginx, redis):
    n = nginx(workers=2)

    def routes(user):
        r = redis_cmd(redis, "HGETALL", routes_key(user))
        return {k.decode(): v.decode() for k, v in zip(r[0::2], r[1::2])}

    async def go():
        a1 = await login(n, "alice", device="one")
        a2 = await login(n, "alice", device="two")
        r = routes("alice")
        assert set(r) == {a1.session, a2.session}, r
        for c in (a1, a2):
            host, pid, _, _ = c.session.split(":")
            assert r[c.session] == "im:route:%s:%s" % (host, pid), r
            assert redis_cmd(redis, "EXISTS", r[c.session] + ":alive") == 1
        await a1.close()
        wait_until(lambda: set(routes("alice")) == {a2.session}, 10,
                   what="the route of the closed session removed")
        await a2.close()
        wait_until(lambda: redis_cmd(redis, "EXISTS",
                                     routes_key("alice")) == 0, 10,
                   what="no routes left for alice")

    run(go())


def test_unauthenticated_session_has_no_route(nginx, redis):
    n = nginx()
    with RawChat(n.port) as c:
        c.ping_pong()
        assert redis_cmd(redis, "KEYS", "im:{u:*}:routes") == []


# --------------------------------------------------------------------------
# refused sends

@pytest.mark.parametrize("to", [
    "", "a b", "*", "x" * 65, "bob\n", "bob\r\n", "{u:bob}", "b\u00f6b",
    "bob:inbox",
], ids=repr)
def test_send_to_invalid_recipient_is_bad_frame(nginx, redis, to):
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        f = await alice.send(to, b"hi", cmid="c1")
        assert body(f) == "error", f
        assert f.error.code == error_code("BAD_FRAME"), f
        await alice.ping()
        # nothing stored, and the session still sends
        assert redis_cmd(redis, "XLEN", "im:{u:alice}:inbox") == 0
        await alice.send_ok("bob", b"fine", cmid="c2")
        await alice.close()

    run(go())
    n.wait_log(r"\[info\] .*client sent a bad Send: need one valid")


@pytest.mark.parametrize("cmid", ["a b", "x" * 65, "*", "id\n"], ids=repr)
def test_send_with_bad_client_msg_id_is_bad_frame(nginx, redis, cmid):
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        f = await alice.send("bob", b"hi", cmid=cmid)
        assert body(f) == "error", f
        assert f.error.code == error_code("BAD_FRAME"), f
        assert redis_cmd(redis, "EXISTS", "im:{u:bob}:inbox") == 0
        await alice.send_ok("bob", b"fine", cmid="ok")
        await alice.close()

    run(go())


def test_sends_over_im_rate_are_refused_and_not_stored(nginx, redis):
    """A Send over im_rate is dropped: Error{RATE_LIMITED} (frame id 0, as
    docs/protocol.md has it), nothing stored, and the session goes on."""
    n = nginx("im_rate 5r/s burst=5;")

    async def go():
        alice = await login(n, "alice")
        await asyncio.sleep(1.2)            # a full bucket
        reqs = [await alice.post(send={"to": "bob", "body": b"r%d" % i,
                                       "client_msg_id": "r%d" % i})
                for i in range(8)]
        await alice.until(lambda: len([f for f in alice.frames
                                       if body(f) in ("send_ack", "error")])
                          >= 8, 10, "8 answers")
        await asyncio.sleep(0.2)
        acks = [f for f in alice.frames if body(f) == "send_ack"]
        limited = [f for f in alice.frames if body(f) == "error"]
        assert acks and limited, alice.frames
        assert len(acks) + len(limited) == 8
        for f in limited:
            assert f.error.code == error_code("RATE_LIMITED"), f
        assert {f.id for f in acks} <= set(reqs)
        stored = {m.client_msg_id for _, m in xrange(redis, "bob")}
        assert stored == {f.send_ack.client_msg_id for f in acks}
        # the bucket refills: the session sends again
        await asyncio.sleep(1.2)
        await alice.send_ok("bob", b"later", cmid="later")
        await alice.close()

    run(go())
    n.wait_log(r"\[info\] .*client is over im_rate")


def test_send_to_group_is_an_error(nginx, redis):
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        for send in ({"group": "friends", "body": b"hi"},
                     {"group": "friends", "to": "bob", "body": b"hi"}):
            id = next_id()
            await alice.post(id=id, send=send)
            f = await alice.reply(id)
            assert body(f) == "error", f
            assert f.error.code != error_code("UNSPECIFIED"), f
        await alice.ping()
        assert redis_cmd(redis, "EXISTS", "im:{u:bob}:inbox") == 0
        await alice.send_ok("bob", b"fine")
        await alice.close()

    run(go())
