"""Faults of a worker's Redis link that no TCP error reports: a
subscriber connection that went silent on the way, and presence changes
published while the link was away.

nginx reaches Redis through a FaultProxy (faultproxy.py), which can
blackhole the links of one kind (bytes both ways silently discarded, no
FIN, no RST), refuse new connections and cut live ones; a second nginx
talking to the same Redis directly hosts the other side where the test
needs one.  Waits are bounded; nothing asserts that something was fast."""

import asyncio
import time

from imchat import close_all, first_sightings, login, wait_for
from imgroup import presence_sub, presences
from imtest import run


# a heartbeat runs every 5 s and a link that did not answer one is dropped
# at the next; the adapter's backoff is capped at 5 s (+ up to 50 % jitter)
HEARTBEAT = 5
RECOVERY = 30
UP = r"redis \S+ is up, channel \"(im:route:[^\"]+)\""


# --------------------------------------------------------------------------
# a subscriber connection dropped silently on the way

def test_silent_subscriber_link_is_noticed_and_sessions_catch_up(
        nginx, redis, fproxy):
    """alice and bob on one worker (Redis through the proxy).  The
    subscriber connection of the worker goes silent on the way, as when a
    NAT or firewall forgot the flow: the proxy discards its bytes both
    ways and closes nothing, while the command connection stays fine, so
    alice's Send to bob is still stored and acknowledged, but its PUBLISH
    to bob's route channel never reaches the worker.

    The fixed server sends PING on the subscriber connection with every
    heartbeat (5 s) and, when no reply came by the next heartbeat, drops
    the link ("no reply for a heartbeat period") and reconnects; then its
    sessions catch up from the inbox.  So bob, connected throughout, gets
    alice's acked message within a bounded wait, once, after the message
    he got before.  (The proxy keeps discarding on the silent connection
    until the worker gives up on it; the new one goes through.)  A server
    whose heartbeat only runs on the command connection never notices:
    bob's session stays deaf while his messages pile up in Redis."""
    n = nginx(workers=1, redis_addr=fproxy.addr)
    n.wait_log(UP, RECOVERY)

    async def go():
        alice = await login(n, "alice")
        bob = await login(n, "bob")
        await alice.send_ok("bob", b"before", cmid="before")
        await bob.until(lambda: first_sightings(bob, "alice", "body") == [b"before"],
                        10, "the message before the fault")
        subs = fproxy.links("sub")
        assert len(subs) == 1, subs
        silent = subs[0]

        mark = n.log_mark()
        t0 = time.monotonic()
        fproxy.blackhole("sub")
        try:
            # the command link is fine: the message is stored and acked
            await alice.send_ok("bob", b"after", cmid="after")
            dropped = await wait_for(lambda: silent.closed, RECOVERY)
        finally:
            fproxy.blackhole("sub", False)
        got = await bob.until(
            lambda: (len(first_sightings(bob, "alice", "body")) >= 2
                     and first_sightings(bob, "alice", "body")),
            max(1, RECOVERY - (time.monotonic() - t0)),
            "alice's acked message after the subscriber link went silent "
            "(within %d s of the fault the worker %s the silent link; the "
            "proxy discarded %d bytes)"
            % (RECOVERY, "dropped" if dropped else "never dropped",
               fproxy.stats()["discarded"]))
        assert dropped
        assert not bob.closed, "bob was disconnected"
        assert got == [b"before", b"after"], got
        assert n.find_log(r"no reply for a heartbeat period, reconnecting",
                          since=mark), n.log_tail(20)
        # the link is back for good: live delivery goes on
        n.wait_log(UP, RECOVERY, since=mark)
        await alice.send_ok("bob", b"later", cmid="later")
        await bob.until(lambda: len(first_sightings(bob, "alice", "body")) >= 3, 10,
                        "a live message once the link is back")
        assert first_sightings(bob, "alice", "body") == [b"before", b"after",
                                                 b"later"]
        await close_all([alice, bob])

    run(go(), timeout=120)


# --------------------------------------------------------------------------
# a presence change while the link was away

def test_presence_change_while_link_is_away_is_passed_on(nginx, redis,
                                                         fproxy):
    """Two nginx on one Redis: alice's (A) through the proxy, bob's (B)
    direct.  alice watches bob (PresenceSub: online).  A's links are cut
    and reconnects refused for about 2 s; meanwhile bob signs out on B,
    and B publishes that he went offline, to a channel A no longer
    listens to.  Then A may connect again.

    The fixed server, once its presence channels are subscribed again on
    the fresh link, reads the state of every watched user and passes on
    what differs from what it had passed on: alice gets the push
    Presence{bob, online=false} (frame id 0) within a bounded wait, and
    only that one.  Later changes arrive as usual (bob back online).  A
    server that only subscribes again keeps showing alice an online bob
    who has left."""
    na = nginx(workers=1, redis_addr=fproxy.addr)
    nb = nginx(workers=1)
    na.wait_log(UP, RECOVERY)

    async def go():
        alice = await login(na, "alice")
        bob = await login(nb, "bob")
        _, st = await presence_sub(alice, ["bob"])
        assert st["bob"].online is True, st

        mark = na.log_mark()
        t_cut = time.monotonic()
        fproxy.refuse()
        assert fproxy.cut() >= 2, fproxy.links()
        na.wait_log(r"reconnecting", 10, since=mark)
        await bob.close()
        # bob's sign-out is done in Redis: no route left
        gone = await wait_for(
            lambda: int(redis.cli("HLEN", "im:{u:bob}:routes")) == 0, 10)
        assert gone, "bob's route is still in Redis"
        await asyncio.sleep(max(0, 2.0 - (time.monotonic() - t_cut)))
        assert not presences(alice, 0, "bob"), "a push while A was away"
        fproxy.allow()

        na.wait_log(UP, RECOVERY, since=mark)
        pushed = await wait_for(lambda: presences(alice, 0, "bob"),
                                RECOVERY)
        assert pushed, ("alice was never told that bob went offline while "
                        "her worker's link was away (%.0f s after the link "
                        "came back)" % RECOVERY)
        assert [p.online for p in pushed] == [False], pushed
        assert pushed[0].last_seen_ms > 0, pushed
        assert not alice.closed

        # the watch is subscribed again: a change now comes as usual
        bob = await login(nb, "bob")
        await alice.until(lambda: len(presences(alice, 0, "bob")) >= 2, 10,
                          "bob back online")
        assert [p.online for p in presences(alice, 0, "bob")] == [False,
                                                                   True]
        await close_all([alice, bob])

    run(go(), timeout=120)
