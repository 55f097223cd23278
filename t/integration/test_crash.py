"""Faults under load: 32 pairs chat across two workers while a worker is
SIGKILLed (the master starts a new one; its clients reconnect; what was
sent to them meanwhile waits in their inboxes; its routes are ignored and
removed once its alive key expires, 15 s at most), or while redis-server
is SIGKILLed and restarted (Send gets Error{UNAVAILABLE} at once, the
connections stay up, the link comes back and every session catches up).
No acknowledged message is lost, none is stored twice.

The figures are printed: run with pytest -s to see them."""

import asyncio
import os
import signal
import time
import zlib

from imchat import close_all, login, login_on, redis_cmd, session_pid
from imtest import run
from imload import (ChatLoad, alive_pids, channel_pid, redis_up_pids,
                    routes_of, stop_and_check_log)


DRAIN = "im_drain_window 1s;"
PAIRS = 32
# the alive key lives 15 s after its last refresh (every 5 s): a dead
# worker's routes count for 15 s at most; this bound is generous
ROUTES_GONE = 25


def test_worker_sigkilled_mid_chat(nginx, redis):
    n = nginx(DRAIN, workers=2)
    victim = []

    async def go():
        load = ChatLoad(n, PAIRS, interval=0.3, prefix="k", max_msgs=1000)
        await load.start()
        await load.wait_acked(300)

        by_pid = load.sessions_by_pid()
        pid = max(by_pid, key=by_pid.get)
        victim.append(pid)
        on_victim = [c for c in load.clients
                     if c.conn is not None
                     and session_pid(c.conn.session) == pid]
        before = set(n.worker_pids())
        sessions_before = {c.user: len(c.sessions) for c in on_victim}
        channel_of = {}
        for u, r in routes_of(redis, load.users).items():
            for s, ch in r.items():
                if channel_pid(ch) == pid:
                    channel_of[u] = ch
        assert channel_of, "no route to the worker about to be killed"
        alive_key = next(iter(channel_of.values())) + ":alive"
        assert redis_cmd(redis, "EXISTS", alive_key) == 1

        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()

        # the master starts a new worker
        await load.until(lambda: pid not in n.worker_pids()
                         and len(set(n.worker_pids()) - before) >= 1
                         and len(n.worker_pids()) == 2,
                         15, "a new worker instead of %d" % pid)
        t_respawn = time.monotonic() - t_kill

        # its clients are back (on the other worker or the new one)
        await load.until(
            lambda: all(c.conn is not None and not c.conn.closed
                        and session_pid(c.conn.session) != pid
                        for c in load.clients),
            20, "every client of the killed worker reconnected")
        t_back = time.monotonic() - t_kill

        # while the chat goes on, the dead routes go
        def stale():
            return {u: [s for s, ch in r.items() if channel_pid(ch) == pid]
                    for u, r in routes_of(redis, load.users).items()
                    if any(channel_pid(ch) == pid for ch in r.values())}

        had_stale = len(stale())
        deadline = time.monotonic() + ROUTES_GONE
        left = stale()
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = stale()
        t_routes = time.monotonic() - t_kill
        alive_left = redis_cmd(redis, "EXISTS", alive_key)

        await load.wait_acked(150)
        report = await load.finish("worker %d SIGKILLed, %d pairs, "
                                   "worker_processes 2" % (pid, PAIRS))
        report.extra += [
            "clients on the killed worker: %d; new worker after %.2f s; "
            "all of them back after %.2f s" % (len(on_victim), t_respawn,
                                               t_back),
            "users with a route to the dead worker: %d right after the "
            "kill, %d after %.1f s" % (had_stale, len(left), t_routes),
        ]
        report.print()
        report.check()

        assert not left, "routes to the killed worker after %ds: %s" % (
            ROUTES_GONE, left)
        assert alive_left == 0, "the dead worker's alive key is still there"
        assert had_stale > 0
        # every client of the killed worker came back with a new session
        for c in on_victim:
            assert len(c.sessions) > sessions_before[c.user], c.user
        assert pid not in alive_pids(redis)

    try:
        run(go(), timeout=170)
    finally:
        # the master's [alert] about the worker we killed is expected
        if victim:
            stop_and_check_log(n, allowed=[
                r"\[alert\] \d+#\d+: worker process %d exited on signal 9"
                % victim[0]])


def test_redis_killed_and_restarted_mid_chat(nginx, redis):
    redis.fsync_always()        # it is SIGKILLed: no acknowledged write lost
    n = nginx(DRAIN, workers=2)

    async def go():
        load = ChatLoad(n, PAIRS, interval=0.3, prefix="d", max_msgs=1000)
        await load.start()
        await load.wait_acked(300)
        sessions0 = {c.user: list(c.sessions) for c in load.clients}
        workers = set(n.worker_pids())

        mark = n.log_mark()
        t_kill = time.monotonic()
        await asyncio.to_thread(redis.stop, kill=True)
        acked_at_kill = load.acked_total()
        await asyncio.sleep(2)
        acked_while_down = load.acked_total() - acked_at_kill
        refused_while_down = sum(c.send_errors["UNAVAILABLE"]
                                 for c in load.clients)
        await asyncio.to_thread(redis.start)
        t_start = time.monotonic()

        await load.until(lambda: redis_up_pids(n, mark) >= workers, 20,
                         "both workers' Redis link up again")
        t_link = time.monotonic() - t_start
        await load.wait_acked(300)

        report = await load.finish("redis-server SIGKILLed for 2 s and "
                                   "restarted, %d pairs, worker_processes 2"
                                   % PAIRS)
        report.extra += [
            "Redis down %.1f s; Sends refused with UNAVAILABLE while down: "
            "%d; acked while down: %d; links up %.2f s after restart" % (
                t_start - t_kill, refused_while_down, acked_while_down,
                t_link),
        ]
        report.print()
        report.check()

        # Redis was really down, and the sessions noticed nothing else
        assert report.send_errors["UNAVAILABLE"] > 0
        assert acked_while_down <= 2 * PAIRS, acked_while_down
        # the connections stayed up: nobody had to reconnect, and still
        # everything acknowledged arrived (catch-up after the link is back)
        assert sum(report.reconnects) == 0, report.reconnects
        assert {c.user: c.sessions for c in load.clients} == sessions0
        assert set(n.worker_pids()) == workers

    run(go(), timeout=170)


def test_dead_route_sharing_a_cache_place_with_a_live_one_is_pruned(
        nginx, redis):
    """A worker remembers which route channels are alive in a small table
    indexed by a hash of the channel.  bob's routes hold a dead channel
    (of a host that is gone) whose hash falls on the same place as his
    live worker's channel, listed first; alice sends to him.  The dead
    route is pruned after the first sends, and bob gets every message.
    (When a channel took another's place whatever it held, the live
    channel threw the dead one's check away on every send: never pruned,
    bob online for good.)"""
    n = nginx(workers=2)

    def place(ch):
        return zlib.crc32(ch.encode()) % 256

    async def go():
        bob = await login(n, "bob")
        alice = await login_on(n, "alice", avoid={bob.pid})
        live = routes_of(redis, ["bob"])["bob"][bob.session]
        dead = next("im:route:deadhost:%d" % k for k in range(100000)
                    if place("im:route:deadhost:%d" % k) == place(live))
        key = "im:{u:bob}:routes"
        redis_cmd(redis, "HDEL", key, bob.session)
        redis_cmd(redis, "HSET", key, "deadhost:1:1:phone", dead)
        redis_cmd(redis, "HSET", key, bob.session, live)
        pruned = None
        for i in range(30):
            await alice.send_ok("bob", b"m%d" % i, cmid="m%d" % i)
            await asyncio.sleep(0.1)
            if b"deadhost:1:1:phone" not in redis_cmd(redis, "HGETALL", key):
                pruned = i
                break
        assert pruned is not None, "the dead route was never pruned"
        assert bob.session in routes_of(redis, ["bob"])["bob"]
        await bob.until(lambda: len(bob.live_messages()) >= pruned + 1, 10,
                        "bob's messages")
        await close_all([alice, bob])

    run(go(), timeout=60)
