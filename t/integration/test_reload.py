"""Graceful reload under load: 32 pairs chat across two workers while
nginx reloads; every session gets Goaway{reconnect_after_ms} (spread over
im_drain_window), is served until then and closed with 1001; clients
reconnect, re-Auth with the same device and replay from their cursor.
No acknowledged message is lost, none is stored twice, every client
reconnected.  And reloads do not leak workers or file descriptors.

The figures (sent, acked, lost, duplicates, reconnect times) are printed:
run with pytest -s to see them."""

import asyncio
import time

from imchat import session_pid
from imtest import run, wait_until
from imload import (ChatLoad, alive_pids, channel_pid, fd_count,
                    process_children, redis_up_pids, routes_of)


DRAIN = "im_drain_window 1s;"
PAIRS = 32
# a worker drains within im_drain_window (1 s) plus the closing handshake
# (3 s at most); this is a generous bound for the old workers to be gone
OLD_GONE = 20


def on_workers(load, pids):
    """True when every client of the load has a session on one of pids."""
    return all(c.conn is not None and not c.conn.closed
               and session_pid(c.conn.session) in pids
               for c in load.clients)


def old_gone(n, old):
    """True once none of the pids in `old` is a child of the master."""
    kids = {p for p, _, _ in process_children(n.pid)}
    return not (kids & set(old))


def test_three_reloads_under_chat(nginx, redis):
    # reuseport: the kernel spreads the clients over both workers by
    # their ports; without it, one busy worker may take every accept
    n = nginx(DRAIN, workers=2, listen="reuseport")

    async def go():
        load = ChatLoad(n, PAIRS, interval=0.3, prefix="r")
        await load.start()
        first = load.sessions_by_pid()
        assert len(first) == 2, "all sessions on one worker: %s" % first
        await load.wait_acked(300)

        moved = []          # s from SIGHUP to every client on new workers
        gone = []           # s from SIGHUP to the old workers' exit
        for r in range(3):
            old = set(n.worker_pids(all=True))
            t = time.monotonic()
            new = set(await asyncio.to_thread(n.reload))
            # every client leaves the old workers for the new ones
            await load.until(lambda: on_workers(load, new), 15,
                             "every client on the workers of reload %d"
                             % (r + 1))
            moved.append(time.monotonic() - t)
            # the old workers drained and exit while the chat goes on
            await load.until(lambda: old_gone(n, old), OLD_GONE,
                             "the workers of before reload %d to exit"
                             % (r + 1))
            gone.append(time.monotonic() - t)
            await load.wait_acked(150)
        last = new
        await load.wait_acked(100)
        report = await load.finish("3 reloads, %d pairs, worker_processes 2"
                                   % PAIRS)
        report.extra.append("sessions per worker at start: %s" % dict(first))
        report.extra.append("Goaways per client: min %d max %d" % (
            min(report.goaways), max(report.goaways)))
        report.extra.append(
            "per reload, SIGHUP -> every client on a new worker: %s s; "
            "-> old workers exited: %s s" % (
                ", ".join("%.2f" % x for x in moved),
                ", ".join("%.2f" % x for x in gone)))
        report.print()
        report.check()

        # every client was told to go and came back, once per reload
        assert min(report.goaways) >= 3, report.goaways
        assert min(report.reconnects) >= 3, report.reconnects
        # a Goaway delay is within the drain window
        assert max(report.goaway_ms) < 1000, max(report.goaway_ms)

        # sessions closed: their routes went with them; the alive keys of
        # the exited workers were deleted at exit
        wait_until(lambda: not any(routes_of(redis, load.users).values()),
                   10, what="every route removed after the clients left")
        assert alive_pids(redis) == last, (alive_pids(redis), last)
        assert sorted(n.worker_pids(all=True)) == sorted(last)

    run(go(), timeout=170)


def _settled_fds(n):
    """(master fds, {worker pid: fds}) once only `workers` workers run."""
    pids = n.worker_pids(all=True)
    return fd_count(n.pid), {p: fd_count(p) for p in pids}


def test_ten_reloads_leak_no_workers_and_no_fds(nginx, redis):
    n = nginx(DRAIN, workers=2)
    margin = 2

    wait_until(lambda: redis_up_pids(n) >= set(n.worker_pids()), 15,
               what="both workers' Redis link up")
    wait_until(lambda: alive_pids(redis) >= set(n.worker_pids()), 15,
               what="both workers' alive keys")
    master0, workers0 = _settled_fds(n)
    base_worker = max(workers0.values())
    kids0 = process_children(n.pid)

    async def go():
        # a few pairs keep chatting through the reloads
        load = ChatLoad(n, 4, interval=0.2, prefix="t")
        await load.start()
        await load.wait_acked(20)
        seen = set(n.worker_pids(all=True))
        for _ in range(10):
            new = await asyncio.to_thread(n.reload)
            seen.update(new)
        last = set(new)
        await load.until(lambda: old_gone(n, seen - last), OLD_GONE,
                         "every worker of the first 10 generations to exit")
        await load.wait_acked(20)
        report = await load.finish("10 reloads in a row, 4 pairs")
        report.print()
        report.check()
        return last, seen

    t0 = time.monotonic()
    last, seen = run(go(), timeout=120)

    # the workers: back to two, of the last generation, nothing else
    # (no zombie, no leftover shutting-down worker)
    wait_until(lambda: [p for p, _, _ in process_children(n.pid)]
               == sorted(last), OLD_GONE, what="only the two newest workers")
    kids = process_children(n.pid)
    assert all(st != "Z" for _, st, _ in kids), kids
    assert len(kids) == len(kids0) == 2, (kids0, kids)
    assert sorted(n.worker_pids()) == sorted(last)

    # their Redis links are up; the old workers' alive keys are gone
    wait_until(lambda: redis_up_pids(n) >= last, 15,
               what="the new workers' Redis link up")
    wait_until(lambda: alive_pids(redis) == last, 20,
               what="only the newest workers' alive keys")

    # file descriptors: the clients are gone, so back to the start
    def fds_back():
        m, ws = _settled_fds(n)
        return (m <= master0 + margin
                and all(v <= base_worker + margin for v in ws.values()))

    try:
        wait_until(fds_back, 15, 0.2, "fd counts back to the start")
    finally:
        master1, workers1 = _settled_fds(n)
        print("\n---- 10 reloads: %d workers seen, %.1f s ----\n"
              "master fds %d -> %d; worker fds %s -> %s (margin %d)" % (
                  len(seen), time.monotonic() - t0, master0, master1,
                  sorted(workers0.values()), sorted(workers1.values()),
                  margin), flush=True)
    assert master1 <= master0 + margin
    assert all(v <= base_worker + margin for v in workers1.values())

    # and they still serve
    async def still():
        load = ChatLoad(n, 2, interval=0.05, prefix="z")
        await load.start()
        await load.wait_acked(10)
        rep = await load.finish("after 10 reloads")
        rep.check()
    run(still(), timeout=60)


def test_reload_routes_point_to_live_workers(nginx, redis):
    """While the chat goes on after a reload, no route is left to a
    worker that exited (routes are removed when its sessions close)."""
    n = nginx(DRAIN, workers=2)

    async def go():
        load = ChatLoad(n, 8, interval=0.2, prefix="q")
        await load.start()
        await load.wait_acked(40)
        old = set(n.worker_pids(all=True))
        await asyncio.to_thread(n.reload)
        await load.until(lambda: old_gone(n, old), OLD_GONE,
                         "the old workers to exit")
        await load.wait_acked(40)
        stale = {u: [s for s, ch in r.items() if channel_pid(ch) in old]
                 for u, r in routes_of(redis, load.users).items()}
        stale = {u: s for u, s in stale.items() if s}
        report = await load.finish("1 reload, 8 pairs")
        report.check()
        assert not stale, "routes to exited workers: %s" % stale

    run(go(), timeout=90)


def test_reload_with_worker_shutdown_timeout(nginx, redis):
    """worker_shutdown_timeout shorter than im_drain_window: the sessions
    whose Goaway delay is later are cut at the timeout; their clients come
    back, nothing acknowledged is lost, and the old worker still takes its
    routes and its alive key with it (well before they would expire)."""
    n = nginx("im_drain_window 4s;", workers=2,
              main_directives="worker_shutdown_timeout 1s;")

    async def go():
        load = ChatLoad(n, 8, interval=0.2, prefix="w")
        await load.start()
        await load.wait_acked(40)
        old = set(n.worker_pids(all=True))
        t = time.monotonic()
        new = set(await asyncio.to_thread(n.reload))
        await load.until(lambda: old_gone(n, old), OLD_GONE,
                         "the old workers to exit")
        t_gone = time.monotonic() - t
        # well within the 15 s an orphaned alive key would live
        await asyncio.sleep(0.5)
        stale = {u: r for u, r in routes_of(redis, load.users).items()
                 if any(channel_pid(ch) in old for ch in r.values())}
        alive_old = alive_pids(redis) & old
        await load.until(lambda: on_workers(load, new), 15,
                         "every client on the new workers")
        await load.wait_acked(40)
        report = await load.finish("1 reload, im_drain_window 4s, "
                                   "worker_shutdown_timeout 1s, 8 pairs")
        report.extra.append("old workers gone %.2f s after SIGHUP; "
                            "their routes left %d, alive keys left %s"
                            % (t_gone, len(stale), sorted(alive_old)))
        report.print()
        report.check()
        assert t_gone < 10, t_gone
        assert not alive_old, "alive keys of exited workers %s" % alive_old
        assert not stale, "routes to exited workers: %s" % stale

    run(go(), timeout=90)
