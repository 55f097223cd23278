"""History and read receipts through real nginx workers and a real Redis.

History: Sync{after, limit} pages forward (oldest first), Sync{before,
limit} pages backward (newest first, scroll-back), both bounds give the
range between, oldest first; every Message carries the Sync's id and a
SyncDone{last, more} ends the page; limit is capped at 1000; the inbox is
bounded by im_inbox_max.

Read receipts: a Send of type "read" whose body is the msg_id read up to,
stored and delivered like a message, so a device that was offline learns
it on replay; any other body is a bad frame."""

import pytest

from imtest import body, run, wait_until
from imchat import (close_all, cursor_key, login, login_on, redis_cmd,
                    xlen, xrange, xrange_cursors, xrange_ids)
from imgroup import (expect_error, ids_of, make_group, place, quiet,
                     send_group, send_group_ok, sender, sync_page)


MAX_ID = "18446744073709551615-18446744073709551615"


def curs_of(msgs):
    return [m.cursor for m in msgs]


def after_newest(msg_id):
    """An id just after msg_id's millisecond: a scroll-back start."""
    return "%d-0" % (int(msg_id.split("-")[0]) + 1)


async def fill(chat, to, count, prefix=b"h"):
    """count messages to `to`, pipelined; their SendAck msg_ids."""
    ids = [await chat.post(send={"to": to, "body": b"%s%d" % (prefix, i),
                                 "client_msg_id": "%s%d" % (
                                     prefix.decode(), i)})
           for i in range(count)]
    out = []
    for id in ids:
        f = await chat.reply(id, 30)
        assert body(f) == "send_ack", f
        out.append(f.send_ack.msg_id)
    return out


async def pages(chat, limit, after="", before="", backward=False,
                most=20):
    """Page through with Sync until more is false: [(msgs, done)]."""
    out = []
    for _ in range(most):
        msgs, done, frames = await sync_page(chat, after, before, limit)
        assert msgs is not None, "Sync refused: %s" % done
        assert all(f.id == frames[0].id and f.id != 0 for f in frames)
        out.append((msgs, done))
        if not done.more:
            return out
        if backward:
            before = done.last
        else:
            after = done.last
    raise AssertionError("more than %d pages" % most)


# --------------------------------------------------------------------------
# paging

def test_history_pages_forward_and_backward(nginx, redis):
    n = nginx(workers=2)

    async def go():
        alice = await login(n, "alice")
        sent = await fill(alice, "bob", 25)
        bob = await login_on(n, "bob", avoid={alice.pid})
        await bob.until(lambda: len(bob.live_messages()) >= 25, 10,
                        "bob's replay")
        assert xrange_ids(redis, "bob") == sent
        inbox = xrange_cursors(redis, "bob")
        bodies = [b"h%d" % i for i in range(25)]

        # forward, oldest first: 10, 10, 5
        fw = await pages(bob, 10)
        assert [len(m) for m, _ in fw] == [10, 10, 5]
        assert [d.more for _, d in fw] == [True, True, False]
        assert [d.last for _, d in fw] == [inbox[9], inbox[19], inbox[24]]
        flat = [m for ms, _ in fw for m in ms]
        assert curs_of(flat) == inbox
        assert [m.body for m in flat] == bodies
        assert all(sender(m) == "alice" and m.to == "bob" for m in flat)

        # backward from the newest, newest first: 10, 10, 5
        bw = await pages(bob, 10, before=after_newest(inbox[-1]),
                         backward=True)
        assert [len(m) for m, _ in bw] == [10, 10, 5]
        assert [d.more for _, d in bw] == [True, True, False]
        assert [d.last for _, d in bw] == [inbox[15], inbox[5], inbox[0]]
        flat = [m for ms, _ in bw for m in ms]
        assert curs_of(flat) == inbox[::-1]
        assert [m.body for m in flat] == bodies[::-1]

        # scroll-back from a message the client has: what is before it
        bw = await pages(bob, 10, before=inbox[-1], backward=True)
        assert [len(m) for m, _ in bw] == [10, 10, 4]
        assert curs_of([m for ms, _ in bw for m in ms]) == inbox[-2::-1]
        # ... and from the top of the id space
        msgs, done, _ = await sync_page(bob, before=MAX_ID, limit=3)
        assert curs_of(msgs) == inbox[:-4:-1], done
        assert (done.last, done.more) == (inbox[-3], True)

        # a page ending exactly at the end says no more, both ways
        msgs, done, _ = await sync_page(bob, after=inbox[14], limit=10)
        assert curs_of(msgs) == inbox[15:] and done.more is False
        msgs, done, _ = await sync_page(bob, before=inbox[10], limit=10)
        assert curs_of(msgs) == inbox[9::-1] and done.more is False
        # nothing beyond either end
        msgs, done, _ = await sync_page(bob, after=inbox[-1], limit=10)
        assert (msgs, done.last, done.more) == ([], "", False)
        msgs, done, _ = await sync_page(bob, before=inbox[0], limit=10)
        assert (msgs, done.last, done.more) == ([], "", False)

        # Sync moved neither the live stream nor the cursor
        assert len(bob.live_messages()) == 25
        assert redis_cmd(redis, "HGET", cursor_key("bob"), "default") is None
        await close_all([alice, bob])

    run(go())


def test_history_between_after_and_before(nginx, redis):
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        await fill(alice, "bob", 25)
        inbox = xrange_cursors(redis, "bob")
        bob = await login(n, "bob")

        # the range between, exclusive, oldest first
        msgs, done, _ = await sync_page(bob, after=inbox[4],
                                        before=inbox[15], limit=100)
        assert curs_of(msgs) == inbox[5:15]
        assert (done.last, done.more) == (inbox[14], False)

        # paged with a limit: forward through the range
        pg = await pages(bob, 4, after=inbox[4], before=inbox[15])
        assert [len(m) for m, _ in pg] == [4, 4, 2]
        assert [d.more for _, d in pg] == [True, True, False]
        assert curs_of([m for ms, _ in pg for m in ms]) == inbox[5:15]

        # empty ranges: neighbours, equal bounds, bounds the wrong way
        for a, b in ((inbox[10], inbox[11]), (inbox[10], inbox[10]),
                     (inbox[15], inbox[5])):
            msgs, done, _ = await sync_page(bob, after=a, before=b,
                                            limit=10)
            assert (msgs, done.last, done.more) == ([], "", False), (a, b)

        # bad bounds are bad frames
        for kw in ({"before": "x"}, {"before": "1-"},
                   {"after": inbox[0], "before": "-1"},
                   {"before": "1-2-3"}):
            msgs, err, _ = await sync_page(bob, limit=5, **kw)
            assert msgs is None, kw
            expect_error(err, "BAD_FRAME")
        await bob.ping()
        await close_all([alice, bob])

    run(go())


def test_history_at_the_ends_of_the_id_space(nginx, redis):
    """Valid msg_ids at the very ends ("0-0", the largest id) ask for
    ranges that are simply empty (or whole): the answer is a page, not
    "storage unavailable, retry", which a client would retry for ever."""
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        await fill(alice, "bob", 3)
        inbox = xrange_cursors(redis, "bob")
        bob = await login(n, "bob")
        cases = [
            ({"after": "0-0"}, inbox),
            ({"before": MAX_ID}, inbox[::-1]),
            ({"after": MAX_ID}, []),
            ({"before": "0-0"}, []),
            ({"after": "0-0", "before": MAX_ID}, inbox),
        ]
        bad = []
        for kw, want in cases:
            msgs, done, _ = await sync_page(bob, limit=10, **kw)
            if msgs is None:
                bad.append((kw, "%s" % done.error))
                continue
            assert curs_of(msgs) == want, kw
            assert done.more is False, kw
        assert not bad, "Sync at the ends of the id space refused: %s" % bad
        await close_all([alice, bob])

    run(go())


def test_sync_limit_is_capped_at_1000(nginx, redis):
    n = nginx("im_rate off;")
    total = 1005

    async def go():
        alice = await login(n, "alice")
        await fill(alice, "bob", total)
        inbox = xrange_cursors(redis, "bob")
        assert xlen(redis, "bob") == total
        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= total, 30,
                        "bob's replay")

        for limit in (0, 1001, 5000, 2 ** 32 - 1):
            msgs, done, _ = await sync_page(bob, limit=limit, timeout=20)
            assert curs_of(msgs) == inbox[:1000], limit
            assert (done.last, done.more) == (inbox[999], True), limit
        msgs, done, _ = await sync_page(bob, after=inbox[999], limit=5000)
        assert curs_of(msgs) == inbox[1000:] and done.more is False

        msgs, done, _ = await sync_page(bob, before=MAX_ID, limit=5000,
                                        timeout=20)
        assert curs_of(msgs) == inbox[:4:-1]
        assert (done.last, done.more) == (inbox[5], True)
        msgs, done, _ = await sync_page(bob, limit=1000)
        assert len(msgs) == 1000 and done.more is True
        await close_all([alice, bob])

    run(go(), timeout=90)


def test_history_is_bounded_by_im_inbox_max(nginx, redis):
    """MAXLEN ~ im_inbox_max: old entries go.  Redis trims whole nodes of
    stream-node-max-entries entries; set to 10 here, an inbox holds 10 to
    19 of the 60 messages, the newest ones, and history, replay and the
    group inboxes all see only those."""
    redis_cmd(redis, "CONFIG", "SET", "stream-node-max-entries", "10")
    n = nginx("im_inbox_max 10; im_rate off;")
    make_group(redis, "team", "alice", "bob", "carol")

    async def go():
        alice = await login(n, "alice")
        sent = await fill(alice, "bob", 60)
        for user in ("alice", "bob"):
            k = xlen(redis, user)
            assert 10 <= k < 20, (user, k)
        kept = xrange_cursors(redis, "bob")
        assert xrange_ids(redis, "bob") == sent[-len(kept):]
        assert [m.body for _, m in xrange(redis, "bob")] == [
            b"h%d" % i for i in range(60 - len(kept), 60)]

        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= len(kept), 10,
                        "bob's replay")
        await quiet(0.3)
        assert curs_of(bob.live_messages()) == kept

        fw = await pages(bob, 4)
        assert curs_of([m for ms, _ in fw for m in ms]) == kept
        assert fw[-1][1].more is False
        bw = await pages(bob, 4, before=after_newest(kept[-1]),
                         backward=True)
        assert curs_of([m for ms, _ in bw for m in ms]) == kept[::-1]
        assert bw[-1][1].more is False
        # after a trimmed id: whatever is kept after it
        msgs, done, _ = await sync_page(bob, after="0-1", limit=100)
        assert curs_of(msgs) == kept and done.more is False
        # before a trimmed id: nothing is left there
        msgs, done, _ = await sync_page(bob, before="0-1", limit=100)
        assert (msgs, done.more) == ([], False)

        # a group's messages are trimmed in each member's inbox
        gids = []
        for i in range(40):
            gids.append((await send_group_ok(alice, "team", b"g%d" % i,
                                             cmid="g%d" % i)).msg_id)
        for user in ("alice", "bob", "carol"):
            ids = xrange_ids(redis, user)
            assert 10 <= len(ids) < 20, (user, len(ids))
            assert ids == gids[-len(ids):], user
        await close_all([alice, bob])

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# read receipts

def test_read_receipt_reaches_an_offline_device_on_login(nginx, redis):
    """alice's laptop is offline while bob reads her message: it learns
    of the receipt (and of her own message) from the replay; her phone
    and bob's other device learn it live."""
    n = nginx(workers=3)

    async def go():
        w1, w2, w3 = n.worker_pids()
        laptop, b_phone, b_tablet = await place(n, [
            ("alice", "laptop", w3), ("bob", "phone", w2),
            ("bob", "tablet", w3)])
        hi = await b_phone.send_ok("alice", b"hi alice", cmid="b1")
        await laptop.until(lambda: laptop.live_messages(), 10, "bob's hi")
        seen = laptop.live_messages()[-1]
        assert seen.msg_id == hi.msg_id
        await laptop.ack(seen.cursor)
        wait_until(lambda: redis_cmd(redis, "HGET", cursor_key("alice"),
                                     "laptop") == seen.cursor.encode(),
                   10, what="the laptop's cursor")
        await laptop.close()

        phone = await login_on(n, "alice", device="phone", want=w1)
        hello = await phone.send_ok("bob", b"hello bob", cmid="a1")
        await b_phone.until(lambda: hello.msg_id in ids_of(
            b_phone.live_messages()), 10, "hello at bob")
        read = await b_phone.send_ok("alice", hello.msg_id.encode(),
                                     cmid="r1", type="read")

        def receipts(c):
            return [m for m in c.live_messages() if m.type == "read"]

        for c in (phone, b_tablet):
            await c.until(lambda: receipts(c), 10,
                          "the receipt at %s" % c.session)
            (r,) = receipts(c)
            assert (r.msg_id, sender(r), r.to, r.body, r.client_msg_id) == (
                read.msg_id, "bob", "alice", hello.msg_id.encode(), "r1")
        assert receipts(b_phone) == []

        laptop = await login_on(n, "alice", device="laptop", want=w3)
        await laptop.until(lambda: len(laptop.live_messages()) >= 2, 10,
                           "the laptop's replay")
        await quiet(0.3)
        got = laptop.live_messages()
        assert ids_of(got) == [hello.msg_id, read.msg_id], got
        assert (sender(got[0]), got[0].body) == ("alice", b"hello bob")
        assert (got[1].type, sender(got[1]), got[1].body) == (
            "read", "bob", hello.msg_id.encode())
        # stored once, in both inboxes, under one id
        assert read.msg_id in xrange_ids(redis, "alice")
        assert read.msg_id in xrange_ids(redis, "bob")
        await close_all([laptop, phone, b_phone, b_tablet])

    run(go())


@pytest.mark.parametrize("data", [
    b"", b"hello", b"1-", b"-1", b"12-a", b"1-2-3", b" 1-2", b"1-2\n",
    b"\xff\xfe", b"1" * 60 + b"-1",
], ids=repr)
def test_receipt_that_is_not_a_msg_id_is_a_bad_frame(nginx, redis, data):
    n = nginx()
    make_group(redis, "team", "alice", "bob")

    async def go():
        alice = await login(n, "alice")
        expect_error(await alice.send("bob", data, cmid="r1", type="read"),
                     "BAD_FRAME")
        expect_error(await send_group(alice, "team", data, cmid="r2",
                                      type="read"), "BAD_FRAME")
        for u in ("alice", "bob"):
            assert redis_cmd(redis, "EXISTS", "im:{u:%s}:inbox" % u) == 0
        # the same body as another type is just a message
        await alice.send_ok("bob", data or b"x", cmid="t1", type="text")
        ok = await alice.send_ok("bob", b"1-1", cmid="r3", type="read")
        assert xrange_ids(redis, "bob")[-1] == ok.msg_id
        await alice.close()

    run(go())
