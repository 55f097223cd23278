"""Group chat through real nginx workers and a real Redis: a three-person
group with typing, presence and read receipts on three workers; group
sends reaching every member and device once under one msg_id, with one
PUBLISH per worker; members only; leave, join of closed, open, unknown
and full groups; the im_group_max_members cap.

Groups are set up the admin way: SADD im:{g:<gid>}:members, and
HSET im:{g:<gid>}:meta open 1 for groups users may join themselves."""

import asyncio

from imtest import frame, run, wait_until
from imchat import (RawChat, close_all, cursor_key, login, login_on,
                    next_id, redis_cmd, xlen, xrange, xrange_cursors,
                    xrange_ids)
from imgroup import (ChannelSpy, expect_error, expect_ok, group_members,
                     ids_of, join, leave, make_group, meta_key,
                     parse_route_payload, place, presence_sub, presences,
                     quiet, route_channel, send_group, send_group_ok, sender,
                     typing_frames)


def check_group_messages(got, acks, bodies, gid, frm, type="", cmids=None):
    """got are exactly the messages of acks, in order, as delivered
    Messages of group gid from frm."""
    assert ids_of(got) == [a.msg_id for a in acks], (
        ids_of(got), [a.msg_id for a in acks])
    assert [m.body for m in got] == list(bodies)
    for i, (m, a) in enumerate(zip(got, acks)):
        assert m.group == gid, m
        assert sender(m) == frm, m
        assert m.to == "", m
        assert m.type == type, m
        assert m.ts_ms == a.ts_ms, (m, a)
        if cmids is not None:
            assert m.client_msg_id == cmids[i], m


# --------------------------------------------------------------------------
# the whole day of a three-person group

def test_three_person_group_chat_across_workers(nginx, redis):
    """alice, bob and carol, each on another worker: presence of each
    other, typing, messages, read receipts; carol goes away and learns on
    her return what was said and read meanwhile, but not who typed."""
    n = nginx(workers=3)
    make_group(redis, "trio", "alice", "bob", "carol")

    async def go():
        # each on another worker (placed before anyone watches: the
        # connections that land on the wrong worker come and go)
        w1, w2, w3 = n.worker_pids()
        alice, bob, carol = await place(n, [("alice", "phone", w1),
                                            ("bob", "phone", w2),
                                            ("carol", "phone", w3)])
        assert len({alice.pid, bob.pid, carol.pid}) == 3
        for c in (alice, bob, carol):
            others = sorted({"alice", "bob", "carol"} - {c.user})
            _, st = await presence_sub(c, others)
            assert sorted(st) == others
            assert all(p.online for p in st.values()), st

        # alice types, then asks
        await alice.post(typing={"group": "trio"})
        for c in (bob, carol):
            await c.until(lambda: typing_frames(c), 10,
                          "%s sees alice typing" % c.user)
            (f,) = typing_frames(c)
            assert f.id == 0, f
            t = f.typing
            assert (t.group, t.to, getattr(t, "from")) == (
                "trio", "", "alice"), t
        ask = await send_group_ok(alice, "trio", b"lunch at noon?",
                                  cmid="a1", type="text")
        for c in (bob, carol):
            await c.until(lambda: c.live_messages(), 10,
                          "%s gets alice's question" % c.user)
            check_group_messages(c.live_messages(), [ask],
                                 [b"lunch at noon?"], "trio", "alice",
                                 "text", ["a1"])

        # bob answers; carol reads both (a receipt up to bob's answer)
        await bob.post(typing={"group": "trio"})
        yes = await send_group_ok(bob, "trio", b"yes!", cmid="b1",
                                  type="text")
        await carol.until(lambda: len(carol.live_messages()) >= 2, 10,
                          "carol gets bob's answer")
        assert ids_of(carol.live_messages()) == [ask.msg_id, yes.msg_id]
        read = await send_group_ok(carol, "trio", yes.msg_id.encode(),
                                   cmid="c1", type="read")
        for c in (alice, bob):
            await c.until(lambda: [m for m in c.live_messages()
                                   if m.type == "read"], 10,
                          "%s learns that carol read" % c.user)
        (rcpt,) = [m for m in alice.live_messages() if m.type == "read"]
        assert (sender(rcpt), rcpt.group, rcpt.body, rcpt.msg_id) == (
            "carol", "trio", yes.msg_id.encode(), read.msg_id), rcpt
        assert [m.msg_id for m in bob.live_messages()
                if m.type == "read"] == [read.msg_id]
        # alice saw bob typing and his answer; carol never sees herself
        assert [getattr(f.typing, "from") for f in typing_frames(alice)] \
            == ["bob"]
        assert [m.msg_id for m in alice.live_messages()] == [
            yes.msg_id, read.msg_id]
        assert not [m for m in carol.live_messages() if m.type == "read"]

        # carol acks what she has and goes away
        mine = xrange_cursors(redis, "carol")[-1]
        await carol.ack(mine)
        wait_until(lambda: redis_cmd(redis, "HGET", cursor_key("carol"),
                                     "phone") == mine.encode(),
                   10, what="carol's cursor")
        await carol.close()
        for c in (alice, bob):
            await c.until(lambda: presences(c, user="carol"), 10,
                          "%s sees carol offline" % c.user)
            (off,) = presences(c, user="carol")
            assert off.online is False and off.last_seen_ms > 0, off

        # meanwhile: alice types and writes, bob reads it
        await asyncio.sleep(1.1)    # alice's typing is rate limited
        await alice.post(typing={"group": "trio"})
        await bob.until(lambda: len(typing_frames(bob)) >= 2, 10,
                        "bob sees alice typing again")
        late = await send_group_ok(alice, "trio", b"carol, you there?",
                                   cmid="a2", type="text")
        await bob.until(lambda: late.msg_id in ids_of(bob.live_messages()),
                        10, "bob gets the message")
        seen = await send_group_ok(bob, "trio", late.msg_id.encode(),
                                   cmid="b2", type="read")
        await alice.until(lambda: seen.msg_id in ids_of(
            alice.live_messages()), 10, "alice gets bob's receipt")

        # carol is back: the replay brings what she missed, no typing
        carol = await login(n, "carol", device="phone")
        await carol.until(lambda: len(carol.live_messages()) >= 2, 10,
                          "carol's replay")
        for c in (alice, bob):
            await c.until(lambda: len(presences(c, user="carol")) >= 2, 10,
                          "%s sees carol back" % c.user)
        await quiet(1.5)
        got = carol.live_messages()
        assert ids_of(got) == [late.msg_id, seen.msg_id], got
        assert (got[0].type, got[0].body, sender(got[0])) == (
            "text", b"carol, you there?", "alice")
        assert (got[1].type, got[1].body, sender(got[1])) == (
            "read", late.msg_id.encode(), "bob")
        assert all(m.group == "trio" for m in got)
        assert typing_frames(carol) == []
        for c in (alice, bob):
            assert [p.online for p in presences(c, user="carol")] == [
                False, True], presences(c, user="carol")
        # every inbox holds the same entries under the same ids
        everything = [ask.msg_id, yes.msg_id, read.msg_id, late.msg_id,
                      seen.msg_id]
        for u in ("alice", "bob", "carol"):
            assert xrange_ids(redis, u) == everything, u
        await close_all([alice, bob, carol])

    run(go(), timeout=60)


# --------------------------------------------------------------------------
# fan-out

def test_group_send_reaches_every_member_and_device_once(nginx, redis):
    """Members with two devices on different workers, the sender's other
    devices on the same and on another worker: every device but the
    sending session gets each message once, under the msg_id of the
    SendAck, which is the id in every member's inbox; each worker with a
    member route gets one PUBLISH per message, a worker without none."""
    n = nginx(workers=4)
    make_group(redis, "team", "alice", "bob", "carol")

    async def go():
        w1, w2, w3, w4 = n.worker_pids()
        (a_phone, a_tablet, a_laptop, b_phone, b_laptop, c_phone,
         c_laptop, dave) = await place(n, [
             ("alice", "phone", w1), ("alice", "tablet", w1),
             ("alice", "laptop", w2), ("bob", "phone", w2),
             ("bob", "laptop", w3), ("carol", "phone", w3),
             ("carol", "laptop", w1), ("dave", "phone", w4)])
        receivers = [a_tablet, a_laptop, b_phone, b_laptop, c_phone,
                     c_laptop]
        chan = {w: route_channel(c.session) for w, c in
                ((w1, a_phone), (w2, a_laptop), (w3, b_laptop),
                 (w4, dave))}
        spy = ChannelSpy(redis, chan.values())
        try:
            acks = []
            for i in range(3):
                acks.append(await send_group_ok(
                    a_phone, "team", b"hello team %d" % i, cmid="t%d" % i,
                    type="text"))
            ids = [a.msg_id for a in acks]
            assert len(set(ids)) == 3
            for c in receivers:
                await c.until(lambda: len(c.live_messages()) >= 3, 10,
                              "3 messages at %s/%s" % (c.user, c.session))
            await quiet(0.5)
            for c in receivers:
                check_group_messages(c.live_messages(), acks,
                                     [b"hello team %d" % i
                                      for i in range(3)],
                                     "team", "alice", "text",
                                     ["t0", "t1", "t2"])
            assert a_phone.live_messages() == []
            assert dave.live_messages() == []
            for u in ("alice", "bob", "carol"):
                assert xrange_ids(redis, u) == ids, u
            assert xlen(redis, "dave") == 0

            # one PUBLISH per worker and message, naming each user once
            expect_users = {w1: {"alice", "carol"}, w2: {"alice", "bob"},
                            w3: {"bob", "carol"}}
            wait_until(lambda: all(spy.count(chan[w]) >= 3
                                   for w in expect_users), 10,
                       what="the PUBLISHes")
            for w, users in expect_users.items():
                got = [parse_route_payload(p)
                       for _, p in spy.messages(chan[w])]
                assert [g[1] for g in got] == ids, (w, got)
                for kind, _, origin, us in got:
                    assert kind == "m"
                    assert origin == a_phone.session
                    assert sorted(us) == sorted(users), (w, us)
            assert spy.count(chan[w4]) == 0
        finally:
            spy.close()
        await close_all(receivers + [a_phone, dave])

    run(go(), timeout=60)


def test_group_message_replay_and_retry(nginx, redis):
    """An offline member gets the group's messages on login; the sender's
    own device sees them again after reconnecting, with the SendAck's
    msg_id; a Send retried with its client_msg_id is stored once."""
    n = nginx(workers=2)
    make_group(redis, "team", "alice", "bob", "carol")

    async def go():
        alice = await login(n, "alice", device="phone")
        carol = await login(n, "carol")
        acks = []
        for i in range(4):
            acks.append(await send_group_ok(alice, "team", b"m%d" % i,
                                            cmid="m%d" % i))
        again = await send_group_ok(alice, "team", b"other body",
                                    cmid="m1")
        assert again.msg_id == acks[1].msg_id
        await carol.until(lambda: len(carol.live_messages()) >= 4, 10,
                          "carol's live copies")
        await quiet(0.3)
        ids = [a.msg_id for a in acks]
        assert ids_of(carol.live_messages()) == ids
        for u in ("alice", "bob", "carol"):
            assert xrange_ids(redis, u) == ids, u

        bob = await login(n, "bob")
        await bob.until(lambda: len(bob.live_messages()) >= 4, 10,
                        "bob's replay")
        await alice.close()
        alice = await login(n, "alice", device="phone")
        await alice.until(lambda: len(alice.live_messages()) >= 4, 10,
                          "alice's replay")
        await quiet(0.3)
        for c in (bob, alice):
            check_group_messages(c.live_messages(), acks,
                                 [b"m%d" % i for i in range(4)], "team",
                                 "alice", "", ["m0", "m1", "m2", "m3"])
        await close_all([alice, bob, carol])

    run(go())


# --------------------------------------------------------------------------
# who may send

def test_non_member_is_refused(nginx, redis):
    n = nginx(workers=2)
    make_group(redis, "team", "alice", "bob")

    async def go():
        bob = await login(n, "bob")
        dave = await login(n, "dave")
        # dave is no member: FORBIDDEN, nothing stored, nothing delivered
        expect_error(await send_group(dave, "team", b"let me in",
                                      cmid="d1"), "FORBIDDEN")
        # a group nobody created: dave is no member of it either
        expect_error(await send_group(dave, "ghosts", b"boo", cmid="d2"),
                     "FORBIDDEN")
        # bad ids and two targets are bad frames
        expect_error(await send_group(dave, "no such", b"x"), "BAD_FRAME")
        expect_error(await send_group(dave, "x" * 65, b"x"), "BAD_FRAME")
        expect_error(await dave.request(send={
            "group": "team", "to": "bob", "body": b"x"}), "BAD_FRAME")
        # typing into the group is dropped silently
        await dave.post(typing={"group": "team"})
        await dave.ping()
        await quiet(1.0)
        assert bob.frames[1:] == [], bob.frames[1:]
        for u in ("alice", "bob", "dave"):
            assert redis_cmd(redis, "EXISTS", "im:{u:%s}:inbox" % u) == 0
        assert group_members(redis, "team") == {"alice", "bob"}

        # once an admin adds dave, the same client_msg_id is a new send
        redis_cmd(redis, "SADD", "im:{g:team}:members", "dave")
        ack = await send_group_ok(dave, "team", b"hi all", cmid="d1")
        await bob.until(lambda: bob.live_messages(), 10, "dave's message")
        assert ids_of(bob.live_messages()) == [ack.msg_id]
        assert xrange_ids(redis, "alice") == [ack.msg_id]
        await close_all([bob, dave])

    run(go())


def test_leave_stops_delivery(nginx, redis):
    n = nginx(workers=3)
    make_group(redis, "team", "alice", "bob", "carol")

    async def go():
        w1, w2, w3 = n.worker_pids()
        alice, bob, c_phone, c_laptop = await place(n, [
            ("alice", "phone", w1), ("bob", "phone", w2),
            ("carol", "phone", w3), ("carol", "laptop", w1)])
        first = await send_group_ok(alice, "team", b"before", cmid="x1")
        for c in (bob, c_phone, c_laptop):
            await c.until(lambda: c.live_messages(), 10, "the first one")

        id = next_id()
        await c_phone.post(id=id, group_leave={"group": "team"})
        expect_ok(await c_phone.reply(id), id)
        assert group_members(redis, "team") == {"alice", "bob"}

        second = await send_group_ok(alice, "team", b"after", cmid="x2")
        await bob.until(lambda: len(bob.live_messages()) >= 2, 10,
                        "the second one at bob")
        await alice.post(typing={"group": "team"})
        await bob.until(lambda: typing_frames(bob), 10, "typing at bob")
        await quiet(1.0)
        for c in (c_phone, c_laptop):
            assert ids_of(c.live_messages()) == [first.msg_id]
            assert typing_frames(c) == []
        assert xrange_ids(redis, "carol") == [first.msg_id]
        assert xrange_ids(redis, "bob") == [first.msg_id, second.msg_id]

        # gone is gone: no sending, no second leave, no joining back
        expect_error(await send_group(c_laptop, "team", b"hey"),
                     "FORBIDDEN")
        expect_error(await leave(c_laptop, "team"), "NOT_FOUND")
        expect_error(await join(c_laptop, "team"), "FORBIDDEN")
        assert group_members(redis, "team") == {"alice", "bob"}
        await close_all([alice, bob, c_phone, c_laptop])

    run(go())


def test_join_closed_unknown_open_and_full_groups(nginx, redis):
    n = nginx("im_group_max_members 3;", workers=2)
    make_group(redis, "closed", "bob")
    make_group(redis, "open", "bob", open=True)
    make_group(redis, "lobby", open=True)
    make_group(redis, "full", "x1", "x2", "x3", open=True)

    async def go():
        alice = await login(n, "alice")
        bob = await login_on(n, "bob", avoid={alice.pid})

        expect_error(await join(alice, "closed"), "FORBIDDEN")
        expect_error(await join(alice, "nowhere"), "NOT_FOUND")
        expect_error(await join(alice, "full"), "TOO_LARGE")
        expect_error(await join(alice, "bad id"), "BAD_FRAME")
        expect_error(await leave(alice, "bad id"), "BAD_FRAME")
        expect_error(await leave(alice, "nowhere"), "NOT_FOUND")
        assert group_members(redis, "closed") == {"bob"}
        assert group_members(redis, "full") == {"x1", "x2", "x3"}
        assert redis_cmd(redis, "EXISTS", "im:{g:nowhere}:members") == 0

        id = next_id()
        await alice.post(id=id, group_join={"group": "open"})
        expect_ok(await alice.reply(id), id)
        assert group_members(redis, "open") == {"alice", "bob"}
        expect_ok(await join(alice, "open"))    # already in: fine
        assert group_members(redis, "open") == {"alice", "bob"}
        ack = await send_group_ok(bob, "open", b"welcome", cmid="w1")
        await alice.until(lambda: alice.live_messages(), 10, "welcome")
        assert ids_of(alice.live_messages()) == [ack.msg_id]
        assert alice.live_messages()[0].group == "open"

        # an open group with no members yet: the first one joins it
        expect_ok(await join(alice, "lobby"))
        assert group_members(redis, "lobby") == {"alice"}

        # the admin closes "open": alice leaves and cannot come back
        redis_cmd(redis, "HSET", meta_key("open"), "open", "0")
        expect_ok(await leave(alice, "open"))
        expect_error(await join(alice, "open"), "FORBIDDEN")
        await close_all([alice, bob])

    run(go())


def test_group_over_the_limit_is_refused(nginx, redis):
    n = nginx("im_group_max_members 3;", workers=2)
    make_group(redis, "big", "alice", "bob", "carol", "dave")
    make_group(redis, "small", "alice", "bob", "carol")

    async def go():
        alice = await login(n, "alice")
        bob = await login_on(n, "bob", avoid={alice.pid})
        expect_error(await send_group(alice, "big", b"too many",
                                      cmid="b1"), "TOO_LARGE")
        await alice.post(typing={"group": "big"})
        await quiet(1.0)
        assert bob.frames[1:] == [], bob.frames[1:]
        for u in ("alice", "bob", "carol", "dave"):
            assert redis_cmd(redis, "EXISTS", "im:{u:%s}:inbox" % u) == 0
        # exactly at the limit is fine
        ack = await send_group_ok(alice, "small", b"just right", cmid="s1")
        await bob.until(lambda: bob.live_messages(), 10, "the message")
        assert ids_of(bob.live_messages()) == [ack.msg_id]
        assert [i for i, _ in xrange(redis, "carol")] == [ack.msg_id]
        await close_all([alice, bob])

    run(go())


def test_group_presence_and_typing_need_auth(nginx, redis):
    """Before AuthOk, GroupJoin, GroupLeave, Send{group}, PresenceSub,
    Typing and Sync{before} are refused with UNAUTHENTICATED and touch
    nothing in Redis."""
    n = nginx()
    make_group(redis, "team", "alice", open=True)
    with RawChat(n.port) as c:
        for b in ({"group_join": {"group": "team"}},
                  {"group_leave": {"group": "team"}},
                  {"send": {"group": "team", "body": b"x"}},
                  {"presence_sub": {"users": ["alice"]}},
                  {"typing": {"group": "team"}},
                  {"sync": {"before": "1-0", "limit": 5}}):
            id = next_id()
            c.send_pb(frame(id=id, **b))
            c.expect_error(id, "UNAUTHENTICATED")
        c.ping_pong()
    assert group_members(redis, "team") == {"alice"}
    assert redis_cmd(redis, "KEYS", "im:{u:*") == []


def test_an_inbox_that_refuses_does_not_keep_the_group_from_the_others(
        nginx, redis):
    """A group of 300 (two store calls on one Redis, of 256 and 44
    members) where one member's inbox key is not a stream: the store
    cannot go there.  The send is answered UNAVAILABLE (and its retry
    with the same client_msg_id too), but every other member has it in
    the inbox, under one msg_id, and a member online gets it live.
    (When one failing XADD aborted its store call, the members stored
    before it in that call were never told live, and the retry stored
    again without telling them either.)"""
    n = nginx(workers=1, server_directives="im_group_max_members 1000;")
    members = ["u%03d" % i for i in range(300)]
    make_group(redis, "big", *members)
    redis_cmd(redis, "SET", "im:{u:u290}:inbox", "junk")

    async def go():
        a = await login(n, "u000")
        online = await login(n, "u289")
        for _ in range(2):
            f = await send_group(a, "big", b"hi", cmid="same")
            expect_error(f, "UNAVAILABLE")
        await online.until(lambda: online.live_messages(), 10,
                           "the message, live")
        ids = {m.msg_id for m in online.live_messages()}
        assert len(ids) == 1, ids
        for u in members:
            if u != "u290":
                assert set(xrange_ids(redis, u)) == ids, u
        await close_all([a, online])

    run(go())
