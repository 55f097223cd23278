"""Presence and typing through real nginx workers and a real Redis.

Presence: PresenceSub answers at once with one Presence per user (online,
last_seen_ms) under the request id, then pushes transitions with id 0:
online with a user's first session, offline with the last one, coalesced
(several devices are online once; a flap within a second is not passed
on); im_presence_max users per session; bad ids.

Typing: forwarded live to the recipients' sessions on every worker, never
to the sender's own sessions, never stored or replayed, at most one a
second per session."""

import asyncio
import time

import pytest

from imtest import body, run, wait_until
from imchat import (close_all, login, login_on, next_id, redis_cmd, xlen)
from imgroup import (expect_error, make_group, place, presence_sub,
                     presences, quiet, sync_page, typing_frames)


def seen_ms(redis, user):
    v = redis_cmd(redis, "GET", "im:{u:%s}:seen" % user)
    return int(v) if v else None


def transitions(chat, user):
    """The pushed (id 0) transitions of user as [True/False, ...]."""
    return [p.online for p in presences(chat, 0, user)]


# --------------------------------------------------------------------------
# the answer to PresenceSub

def test_initial_answer_for_online_offline_and_never_seen(nginx, redis):
    n = nginx(workers=2)

    async def go():
        # erin was here and left; carol is here on two devices
        t0 = int(time.time() * 1000)
        erin = await login(n, "erin")
        await erin.close()
        wait_until(lambda: seen_ms(redis, "erin"), 10,
                   what="erin's last seen time")
        t1 = int(time.time() * 1000)
        c1 = await login(n, "carol", device="phone")
        c2 = await login_on(n, "carol", device="laptop", avoid={c1.pid})

        alice = await login(n, "alice")
        id = next_id()
        await alice.post(id=id, presence_sub={
            "users": ["carol", "dave", "erin"]})
        await alice.until(lambda: len(alice.by_id.get(id, [])) >= 3, 10,
                          "three Presence answers")
        fs = alice.by_id[id]
        assert [body(f) for f in fs] == ["presence"] * 3, fs
        st = {f.presence.user: f.presence for f in fs}
        assert set(st) == {"carol", "dave", "erin"}, fs
        assert st["carol"].online is True
        assert (st["dave"].online, st["dave"].last_seen_ms) == (False, 0)
        assert st["erin"].online is False
        # Redis's clock and ours: the same host, a generous margin
        assert t0 - 5000 <= st["erin"].last_seen_ms <= t1 + 5000, (
            t0, st["erin"].last_seen_ms, t1)
        assert st["erin"].last_seen_ms == seen_ms(redis, "erin")

        # nothing changes, nothing is pushed
        await quiet(1.5)
        assert presences(alice, 0) == []
        assert len(alice.by_id[id]) == 3
        await close_all([alice, c1, c2])

    run(go())


def test_limits_and_bad_user_ids(nginx, redis):
    n = nginx("im_presence_max 3;")

    async def go():
        alice = await login(n, "alice")
        await presence_sub(alice, ["u1", "u2", "u3", "u4"],
                           error="TOO_LARGE")
        await presence_sub(alice, ["u1", "u2"])
        # the limit counts what the session already watches
        await presence_sub(alice, ["u3", "u4"], error="TOO_LARGE")
        await presence_sub(alice, ["u3"])
        await presence_sub(alice, ["u4"], error="TOO_LARGE")

        bob = await login(n, "bob")
        await presence_sub(bob, [], error="BAD_FRAME")
        for bad in ("", "a b", "x" * 65, "*", "gina\n", "{u:x}"):
            await presence_sub(bob, ["gina", bad], error="BAD_FRAME")
        # a refused PresenceSub watches nobody
        gina = await login(n, "gina")
        await quiet(2.0)
        assert presences(bob, 0) == []
        await bob.ping()
        # the watched ones are still watched after the refusals
        u1 = await login(n, "u1")
        await alice.until(lambda: transitions(alice, "u1") == [True], 10,
                          "u1 online")
        await close_all([alice, bob, gina, u1])

    run(go())


# --------------------------------------------------------------------------
# transitions

def test_transitions_with_multi_device_users(nginx, redis):
    """Watchers on two workers; bob comes with a phone, then a laptop on
    another worker, leaves the phone, then the laptop: each watcher sees
    online once and offline once, with the time he was last seen."""
    n = nginx(workers=3)

    async def go():
        w1, w2, w3 = n.worker_pids()
        alice, frank = await place(n, [("alice", "", w1),
                                        ("frank", "", w2)])
        watchers = (alice, frank)
        for c in watchers:
            _, st = await presence_sub(c, ["bob"])
            assert st["bob"].online is False

        # (bob is never placed on a worker while offline: connections
        # that land on the wrong worker would come and go, a flap)
        phone = await login(n, "bob", device="phone")
        for c in watchers:
            await c.until(lambda: transitions(c, "bob") == [True], 10,
                          "%s sees bob online" % c.user)
        laptop = await login_on(n, "bob", device="laptop",
                                avoid={phone.pid})
        await quiet(1.5)
        await phone.close()
        await quiet(1.5)
        for c in watchers:
            assert transitions(c, "bob") == [True], presences(c, 0)

        await laptop.close()
        for c in watchers:
            await c.until(lambda: transitions(c, "bob") == [True, False],
                          10, "%s sees bob offline" % c.user)
            off = presences(c, 0, "bob")[-1]
            assert off.last_seen_ms > 0
            assert off.last_seen_ms == seen_ms(redis, "bob")

        # two devices signing in at once are online once
        back = await asyncio.gather(login(n, "bob", device="phone"),
                                    login(n, "bob", device="laptop"))
        for c in watchers:
            await c.until(lambda: transitions(c, "bob") == [
                True, False, True], 10, "%s sees bob back" % c.user)
        await quiet(1.5)
        for c in watchers:
            assert transitions(c, "bob") == [True, False, True]
        await close_all(list(watchers) + list(back))

    run(go(), timeout=60)


def test_reconnect_within_a_second_is_not_a_transition(nginx, redis):
    """bob's connection drops and his app reconnects at once: watchers
    see no offline (and no second online); an online+offline blip of a
    user is not passed on either; a real departure is."""
    n = nginx(workers=2)

    async def go():
        alice = await login(n, "alice")
        await presence_sub(alice, ["bob", "carol"])
        bob = await login(n, "bob")
        await alice.until(lambda: transitions(alice, "bob") == [True], 10,
                          "bob online")

        # two drops, each in a second of its own (the held-back change of
        # one must not meet the next drop)
        for _ in range(2):
            t = time.monotonic()
            await bob.close()
            bob = await login(n, "bob")
            if time.monotonic() - t >= 0.8:
                pytest.skip("reconnecting took %.1f s here, not a flap"
                            % (time.monotonic() - t))
            await quiet(1.3)
        # carol: in and out at once
        carol = await login(n, "carol")
        await carol.close()

        await quiet(1.5)
        assert transitions(alice, "bob") == [True], presences(alice, 0)
        assert transitions(alice, "carol") == [], presences(alice, 0)

        await bob.close()
        await alice.until(lambda: transitions(alice, "bob") == [True, False],
                          10, "bob offline")
        await alice.close()

    run(go())


def test_flap_straddling_a_passed_on_change_is_not_sent(nginx, redis):
    """bob goes offline and back (a flap) twice, each time for well under
    a second, 0.8 s apart: neither flap may reach the watcher as an
    offline+online pair ("a flap within a second is not sent twice")."""
    n = nginx()

    async def go():
        alice = await login(n, "alice")
        await presence_sub(alice, ["bob"])
        bob = await login(n, "bob", device="phone")
        await alice.until(lambda: transitions(alice, "bob") == [True], 10,
                          "bob online")
        await quiet(1.5)

        # flap 1 at ~0 s, down ~0.2 s; flap 2 at ~0.8 s, down ~0.4 s
        await bob.close()
        await asyncio.sleep(0.2)
        bob = await login(n, "bob", device="phone")
        await asyncio.sleep(0.6)
        await bob.close()
        await asyncio.sleep(0.4)
        bob = await login(n, "bob", device="phone")

        await quiet(2.5)
        assert transitions(alice, "bob") == [True], (
            "bob was away twice for under a second, yet the watcher got "
            "%s" % transitions(alice, "bob"))
        await close_all([alice, bob])

    run(go())


def test_watchers_on_one_worker_share_and_release_the_watch(nginx, redis):
    """Two sessions of one worker watch bob; when one closes the other is
    still told; when both are gone, a new watcher there starts over."""
    n = nginx()

    async def go():
        a1 = await login(n, "alice", device="one")
        a2 = await login(n, "alice", device="two")
        for c in (a1, a2):
            await presence_sub(c, ["bob"])
        bob = await login(n, "bob")
        for c in (a1, a2):
            await c.until(lambda: transitions(c, "bob") == [True], 10,
                          "bob online")
        await a1.close()
        await bob.close()
        await a2.until(lambda: transitions(a2, "bob") == [True, False], 10,
                       "bob offline")
        await a2.close()

        a3 = await login(n, "alice", device="three")
        _, st = await presence_sub(a3, ["bob"])
        assert st["bob"].online is False
        bob = await login(n, "bob")
        await a3.until(lambda: transitions(a3, "bob") == [True], 10,
                       "bob online again")
        await close_all([a3, bob])

    run(go())


# --------------------------------------------------------------------------
# typing

def test_typing_reaches_recipient_devices_not_sender_devices(nginx, redis):
    n = nginx(workers=3)
    make_group(redis, "team", "alice", "bob", "carol")

    async def go():
        w1, w2, w3 = n.worker_pids()
        a_phone, a_laptop, b_phone, b_laptop, carol, dave = await place(
            n, [("alice", "phone", w1), ("alice", "laptop", w2),
                ("bob", "phone", w2), ("bob", "laptop", w3),
                ("carol", "phone", w1), ("dave", "phone", w3)])

        # 1:1; a forged "from" is replaced by the sender's user id
        await a_phone.post(typing={"to": "bob", "from": "mallory"})
        for c in (b_phone, b_laptop):
            await c.until(lambda: typing_frames(c), 10,
                          "typing at bob's %s" % c.session)
            (f,) = typing_frames(c)
            assert f.id == 0
            assert (f.typing.to, f.typing.group,
                    getattr(f.typing, "from")) == ("bob", "", "alice"), f

        # the group; alice's laptop types (another session, own limit)
        await a_laptop.post(typing={"group": "team"})
        for c in (b_phone, b_laptop, carol):
            await c.until(lambda: [f for f in typing_frames(c)
                                   if f.typing.group == "team"], 10,
                          "group typing at %s" % c.user)
        await quiet(1.0)
        for c in (b_phone, b_laptop, carol):
            gt = [f.typing for f in typing_frames(c)
                  if f.typing.group == "team"]
            assert len(gt) == 1, gt
            assert (gt[0].to, getattr(gt[0], "from")) == ("", "alice")
        assert [len(typing_frames(c)) for c in (b_phone, b_laptop)] == [2, 2]
        assert len(typing_frames(carol)) == 1
        # never to the sender's own sessions, never to outsiders
        for c in (a_phone, a_laptop, dave):
            assert typing_frames(c) == [], (c.user, typing_frames(c))
        # typing to oneself is nobody's business
        await b_phone.post(typing={"to": "bob"})
        # a bad target is a bad frame; a good one still works after
        for t in ({"to": "bob", "group": "team"}, {}, {"to": "a b"},
                  {"group": "x" * 65}):
            id = next_id()
            await dave.post(id=id, typing=t)
            expect_error(await dave.reply(id), "BAD_FRAME")
        await quiet(1.0)
        assert len(typing_frames(b_laptop)) == 2
        await close_all([a_phone, a_laptop, b_phone, b_laptop, carol, dave])

    run(go())


def test_typing_is_rate_limited_per_session(nginx, redis):
    n = nginx(workers=2)

    async def go():
        bob = await login(n, "bob")
        alice = await login_on(n, "alice", avoid={bob.pid})
        alice2 = await login_on(n, "alice", device="tablet",
                                avoid={bob.pid})
        # a burst of keystrokes: one Typing a second gets through
        for _ in range(10):
            await alice.post(typing={"to": "bob"})
        await bob.until(lambda: typing_frames(bob), 10, "the first typing")
        await quiet(0.5)
        assert len(typing_frames(bob)) == 1
        # another session of the same user has its own allowance
        await alice2.post(typing={"to": "bob"})
        await bob.until(lambda: len(typing_frames(bob)) == 2, 10,
                        "the tablet's typing")
        # the session still works, and typing passes again a second later
        await alice.ping()
        await asyncio.sleep(1.2)
        for _ in range(5):
            await alice.post(typing={"to": "bob"})
        await bob.until(lambda: len(typing_frames(bob)) >= 3, 10,
                        "typing after a second")
        await quiet(0.5)
        assert len(typing_frames(bob)) == 3
        assert all(getattr(f.typing, "from") == "alice"
                   for f in typing_frames(bob))
        await close_all([alice, alice2, bob])

    run(go())


def test_typing_is_never_stored_or_replayed(nginx, redis):
    n = nginx(workers=2)
    make_group(redis, "team", "alice", "bob")

    async def go():
        alice = await login(n, "alice")
        bob = await login_on(n, "bob", device="phone", avoid={alice.pid})
        await alice.post(typing={"to": "bob"})
        await bob.until(lambda: typing_frames(bob), 10, "typing at bob")
        await bob.close()

        # typing while bob is away, 1:1 and in the group
        await asyncio.sleep(1.1)
        await alice.post(typing={"group": "team"})
        await asyncio.sleep(1.1)
        await alice.post(typing={"to": "bob"})
        await alice.ping()
        ack = await alice.send_ok("bob", b"a message", cmid="m1")

        for device in ("phone", "laptop"):
            c = await login(n, "bob", device=device)
            await c.until(lambda: c.live_messages(), 10, "the replay")
            msgs, done, _ = await sync_page(c)
            assert [m.msg_id for m in msgs] == [ack.msg_id]
            await quiet(0.5)
            assert typing_frames(c) == []
            assert [m.msg_id for m in c.live_messages()] == [ack.msg_id]
            await c.close()
        assert xlen(redis, "bob") == 1 and xlen(redis, "alice") == 1
        assert redis_cmd(redis, "KEYS", "*typing*") == []
        await alice.close()

    run(go())


def test_new_watcher_is_not_told_again_what_its_answer_said(nginx, redis):
    """A session that subscribes while a change is on its way (within the
    second it is held back) gets the new state in its answer; the pushed
    transition that follows must not repeat it to that session."""
    n = nginx()

    async def go():
        a1 = await login(n, "alice", device="one")
        await presence_sub(a1, ["bob"])
        bob = await login(n, "bob")
        await a1.until(lambda: transitions(a1, "bob") == [True], 10,
                       "bob online")
        await quiet(1.2)

        await bob.close()
        wait_until(lambda: seen_ms(redis, "bob"), 10, what="bob's logout")
        a2 = await login(n, "alice", device="two")
        _, st = await presence_sub(a2, ["bob"])
        assert st["bob"].online is False
        await a1.until(lambda: transitions(a1, "bob") == [True, False], 10,
                       "bob offline at the first watcher")
        await quiet(1.5)
        assert transitions(a2, "bob") == [], (
            "told offline in the answer, then pushed offline again: %s"
            % presences(a2, 0))
        await close_all([a1, a2])

    run(go())
