"""Redis goes away and comes back: Sends and Auths are refused with
Error{UNAVAILABLE} at once while the connections stay up, the adapter
reconnects (backoff capped at 5 s), routes are registered again, and
sessions catch up on what was stored meanwhile.  No acknowledged message
is ever lost (appendonly yes: what got a SendAck survives a SIGKILL)."""

import asyncio
import os
import shutil
import time

import pytest

from imtest import body, error_code, run, wait_until
from imchat import (Chat, TcpProxy, close_all, id_key, login, login_on,
                    redis_cmd, routes_key, xrange, xrange_ids)


# the adapter's backoff is capped at 5 s (+ up to 50 % jitter): a worker
# is back well within this once Redis is
RECOVERY = 20


@pytest.fixture(autouse=True)
def fsync_always(redis):
    """These tests SIGKILL redis-server: what they check is the module."""
    redis.fsync_always()


def sender(m):
    return getattr(m, "from")


async def unavailable(c, to="bob", cmid="", timeout=5):
    """A Send from c is refused with Error{UNAVAILABLE}."""
    f = await c.send(to, b"while down", cmid=cmid, timeout=timeout)
    assert body(f) == "error", "Send with Redis down: %s" % f
    assert f.error.code == error_code("UNAVAILABLE"), f
    return f


async def send_until_acked(c, to, data, cmid, timeout=RECOVERY):
    """Retry a Send (same client_msg_id) until it is acknowledged; every
    refusal on the way must be UNAVAILABLE.  Returns the SendAck."""
    deadline = time.monotonic() + timeout
    while True:
        f = await c.send(to, data, cmid=cmid, timeout=10)
        if body(f) == "send_ack":
            assert f.send_ack.client_msg_id == cmid, f
            return f.send_ack
        assert body(f) == "error", f
        assert f.error.code == error_code("UNAVAILABLE"), f
        if time.monotonic() >= deadline:
            raise AssertionError("Send %s not acknowledged %ss after Redis "
                                 "came back" % (cmid, timeout))
        await asyncio.sleep(0.1)


async def still_open(c):
    """The WebSocket is up: an im Ping gets its Pong and a WebSocket ping
    its pong."""
    assert not c.closed, "connection closed (code %s)" % c.close_code
    await c.ping(ts=4242)
    pong = await c.ws.ping(b"alive?")
    await asyncio.wait_for(pong, 5)


def alice_bodies(c):
    """{msg_id: body} of the messages from alice that c got (dedup by
    msg_id, as a client does), checking one msg_id never changes body."""
    seen = {}
    for m in c.live_messages():
        if sender(m) != "alice":
            continue
        assert seen.setdefault(m.msg_id, m.body) == m.body, m
    return seen


@pytest.fixture
def proxy(redis):
    p = TcpProxy(redis.port)
    yield p
    p.close()


# --------------------------------------------------------------------------

def test_redis_killed_then_back(nginx, redis):
    n = nginx(workers=2)

    async def go():
        alice = await login(n, "alice")
        bob = await login_on(n, "bob", avoid={alice.pid})
        before = [await alice.send_ok("bob", b"before %d" % i,
                                      cmid="before%d" % i)
                  for i in range(5)]
        await bob.until(lambda: len(bob.live_messages()) >= 5, 10,
                        "the messages before the kill")

        redis.stop(kill=True)

        # refused at once, again and again, both ways; Sync too
        for i in range(3):
            await unavailable(alice, "bob", cmid="down%d" % i)
            await unavailable(bob, "alice")
        f = await bob.request(sync={"after": "", "limit": 5})
        assert body(f) == "error", f
        assert f.error.code == error_code("UNAVAILABLE"), f
        await bob.ack(bob.live_messages()[-1].cursor)  # no reply, no harm
        for c in (alice, bob):
            await still_open(c)

        # Auth is refused too, and the connection stays for a retry
        carol = await Chat.connect(n.url)
        f = await carol.auth(n.token("carol"))
        assert body(f) == "error", f
        assert f.error.code == error_code("UNAVAILABLE"), f
        await still_open(carol)

        # a while down: still connected
        await asyncio.sleep(1.0)
        for c in (alice, bob, carol):
            await still_open(c)

        redis.start()

        # sends work again within the bounded wait (the one refused while
        # down is retried with its client_msg_id)
        back = [await send_until_acked(alice, "bob", b"while down",
                                       "down0")]
        back += [await alice.send_ok("bob", b"after %d" % i,
                                     cmid="after%d" % i)
                 for i in range(5)]
        await send_until_acked(bob, "alice", b"bob is back", "bob-back")

        # carol retries Auth on the same connection
        deadline = time.monotonic() + RECOVERY
        while True:
            f = await carol.auth(n.token("carol"))
            if body(f) == "auth_ok":
                break
            assert f.error.code == error_code("UNAVAILABLE"), f
            assert time.monotonic() < deadline, "Auth not back"
            await asyncio.sleep(0.1)
        await carol.send_ok("bob", b"from carol", cmid="carol1")

        # acknowledged before the kill: still stored
        inbox = xrange(redis, "bob")
        ids = [i for i, _ in inbox]
        assert [m.msg_id for m in bob.live_messages()[:5]] == ids[:5]
        assert len(before) == 5
        stored = {m.client_msg_id for _, m in inbox}
        assert {"before%d" % i for i in range(5)} <= stored
        assert {"down0"} | {"after%d" % i for i in range(5)} <= stored
        # refused sends were not stored
        assert not {"down1", "down2"} & stored

        # bob, connected all along, gets every acknowledged message, in
        # inbox order, without reconnecting
        want = len([1 for _, m in inbox if sender(m) != "bob"])
        await bob.until(lambda: len({m.msg_id for m in bob.live_messages()
                                     if sender(m) != "bob"}) >= want,
                        RECOVERY, "bob catching up")
        got = {m.msg_id: m for m in bob.live_messages()
               if sender(m) != "bob"}
        assert set(got) == {i for i, m in inbox if sender(m) != "bob"}
        assert [got[i].client_msg_id for i in sorted(got, key=id_key)] == (
            ["before%d" % i for i in range(5)] + ["down0"]
            + ["after%d" % i for i in range(5)] + ["carol1"])
        assert len(back) == 6
        await alice.until(lambda: any(m.body == b"bob is back"
                                      for m in alice.live_messages()),
                          RECOVERY, "bob's message at alice")

        # a new device of bob replays the whole inbox
        bob2 = await login(n, "bob", device="tablet", retry=RECOVERY)
        await bob2.until(lambda: len(bob2.live_messages()) >= len(inbox),
                         10, "the replay")
        assert [m.msg_id for m in bob2.live_messages()][:len(ids)] == ids
        await close_all([alice, bob, bob2, carol])

    run(go(), timeout=90)
    n.wait_log(r"redis 127\.0\.0\.1:%d is up" % redis.port)


def test_catch_up_of_what_was_stored_while_a_node_was_cut_off(
        nginx, redis, proxy):
    """Two nginx on one Redis; bob's reaches it through a proxy that stays
    shut after Redis restarts.  What alice (on the other nginx) stores
    meanwhile is published to nobody, and reaches bob, still connected,
    when his node is back."""
    nb = nginx(workers=1, redis_addr=proxy.addr)
    na = nginx(workers=2)

    async def go():
        bob = await login(nb, "bob")
        alice = await login(na, "alice")
        for i in range(3):
            await alice.send_ok("bob", b"live %d" % i, cmid="live%d" % i)
        await bob.until(lambda: len(bob.live_messages()) >= 3, 10,
                        "live messages across nodes")

        redis.stop(kill=True)
        proxy.disable()
        await unavailable(alice, "bob", cmid="x1")
        await unavailable(bob, "alice")

        redis.start()
        # alice's node comes back, bob's does not
        acks = [await send_until_acked(alice, "bob", b"gap 0", "gap0")]
        acks += [await alice.send_ok("bob", b"gap %d" % i, cmid="gap%d" % i)
                 for i in range(1, 6)]
        await unavailable(bob, "alice")
        await still_open(bob)
        assert len(bob.live_messages()) == 3

        proxy.enable()
        await bob.until(lambda: len(bob.live_messages()) >= 9, RECOVERY,
                        "bob catching up without reconnecting")
        await asyncio.sleep(0.3)
        got = bob.live_messages()
        assert [m.body for m in got] == (
            [b"live %d" % i for i in range(3)]
            + [b"gap %d" % i for i in range(6)])
        assert [m.msg_id for m in got] == xrange_ids(redis, "bob")
        await send_until_acked(bob, "alice", b"back", "bob-back")
        await alice.until(lambda: [m for m in alice.live_messages()
                                   if m.body == b"back"], 10,
                          "bob's message at alice")
        await close_all([alice, bob])

    run(go(), timeout=90)


def test_routes_registered_again_after_redis_lost_its_data(nginx, redis):
    n = nginx(workers=2)

    def routes(user):
        r = redis_cmd(redis, "HGETALL", routes_key(user))
        return {k.decode(): v.decode() for k, v in zip(r[0::2], r[1::2])}

    async def go():
        alice = await login(n, "alice")
        b1 = await login(n, "bob", device="one")
        b2 = await login_on(n, "bob", device="two", avoid={b1.pid})
        assert set(routes("bob")) == {b1.session, b2.session}

        # a Redis that comes back empty
        redis.stop(kill=True)
        await unavailable(alice, "bob")
        shutil.rmtree(redis.dir)
        os.makedirs(redis.dir)
        redis.start()

        wait_until(lambda: set(routes("bob")) == {b1.session, b2.session},
                   RECOVERY, what="bob's routes registered again")
        wait_until(lambda: alice.session in routes("alice"), RECOVERY,
                   what="alice's route registered again")
        for c in (b1, b2):
            host, pid, _, _ = c.session.split(":")
            assert routes("bob")[c.session] == "im:route:%s:%s" % (host, pid)

        # and live delivery works again to both devices
        await send_until_acked(alice, "bob", b"hello again", "again")
        for c in (b1, b2):
            await c.until(lambda: [m for m in c.live_messages()
                                   if m.body == b"hello again"],
                          RECOVERY, "the live message on %s" % c.session)
        await close_all([alice, b1, b2])

    run(go(), timeout=90)


def test_no_acknowledged_message_is_lost(nginx, redis):
    """Two senders stream messages while Redis is SIGKILLed and restarted;
    a sender retries anything not acknowledged with the same
    client_msg_id.  Every acknowledged message reaches bob (connected
    throughout) and a fresh device of bob, and each is stored once."""
    n = nginx(workers=4)
    per_sender = 60

    async def go():
        bob = await login(n, "bob")
        senders = [await login_on(n, "alice", device="d%d" % k,
                                  avoid={bob.pid}) for k in range(2)]
        acked = {}          # cmid -> msg_id
        refused = []
        progress = [0]

        async def stream(k, c):
            for i in range(per_sender):
                cmid = "s%d-%d" % (k, i)
                deadline = time.monotonic() + RECOVERY
                while True:
                    f = await c.send("bob", cmid.encode(), cmid=cmid,
                                     timeout=10)
                    if body(f) == "send_ack":
                        acked[cmid] = f.send_ack.msg_id
                        break
                    assert body(f) == "error", f
                    assert f.error.code == error_code("UNAVAILABLE"), f
                    refused.append(cmid)
                    assert time.monotonic() < deadline, cmid
                    await asyncio.sleep(0.05)
                progress[0] += 1
                await asyncio.sleep(0.005)

        async def chaos():
            await bob.until(lambda: progress[0] >= 30, 20, "30 acks")
            redis.stop(kill=True)
            await asyncio.sleep(0.8)
            redis.start()

        await asyncio.gather(chaos(), *(stream(k, c)
                                        for k, c in enumerate(senders)))
        assert refused, "no Send was refused: Redis was not down"
        assert len(acked) == 2 * per_sender

        # stored once each: one entry per client_msg_id in bob's inbox
        inbox = xrange(redis, "bob")
        cmids = [m.client_msg_id for _, m in inbox]
        assert sorted(cmids) == sorted(acked), (len(cmids), len(acked))
        own = [m.client_msg_id for _, m in xrange(redis, "alice")]
        assert sorted(own) == sorted(acked)
        assert {i for i, _ in xrange(redis, "alice")} == set(acked.values())

        # bob saw every acknowledged message (dedup by msg_id)
        await bob.until(lambda: len(alice_bodies(bob)) >= len(inbox),
                        RECOVERY, "bob has every acknowledged message")
        seen = alice_bodies(bob)
        assert set(seen) == {i for i, _ in inbox}
        assert {b.decode() for b in seen.values()} == set(acked)
        # first sightings are in inbox order
        first = []
        for m in bob.live_messages():
            if m.msg_id not in first:
                first.append(m.msg_id)
        assert first == [i for i, _ in inbox]

        # and a fresh device replays all of them
        fresh = await login(n, "bob", device="fresh", retry=RECOVERY)
        await fresh.until(lambda: len(fresh.live_messages()) >= len(inbox),
                          10, "the replay")
        assert [m.msg_id for m in fresh.live_messages()] == [
            i for i, _ in inbox]
        await close_all([bob, fresh] + senders)

    run(go(), timeout=90)


def test_workers_survive_the_redis_link_at_debug_log_level(nginx, redis,
                                                          tmp_path):
    """The Redis adapter's timer events must be safe to log: with an
    error_log at debug level (Debian's nginx is built --with-debug), a
    worker that brings its Redis link up must not crash."""
    n = nginx(main_directives="error_log %s debug;" % (tmp_path / "dbg.log"),
              workers=2)
    n.wait_log(r"redis 127\.0\.0\.1:%d is up" % redis.port)
    pids = n.worker_pids()

    async def go():
        alice = await login(n, "alice")
        bob = await login(n, "bob")
        await alice.send_ok("bob", b"hi", cmid="hi")
        await bob.until(lambda: bob.live_messages(), 10, "the message")
        await close_all([alice, bob])

    run(go())
    assert n.find_log(r"exited on signal") is None, n.log_tail(20)
    assert set(n.worker_pids()) == set(pids)
