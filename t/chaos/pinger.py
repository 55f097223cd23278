#!/usr/bin/python3
"""The chaos run's pinger: an honest user whose application Pings must be
answered within 1 s throughout the run.  It runs in a process of its own,
so that the run's busy event loop does not inflate what it measures.

It keeps one connection per wanted slot (by default two on node A, on
different workers when it can, and one on node B), signs each in as
user `pinger` with its own device, and sends Ping{ts} every --interval
seconds on each, whatever is outstanding.  Every Pong is written as a
JSON line {"t": monotonic send time, "rtt": s, "slot", "pid", "authed"};
a Ping whose connection ended first as {"rtt": null, "lost": why};
connections as {"ev": "up"/"down"/"goaway", ...}.  time.monotonic() is
CLOCK_MONOTONIC, the same clock as the run's.

A Goaway: it goes on until reconnect_after_ms, then reconnects; any
close: it reconnects after 0.2 s.  It ends after --duration seconds, or
when its stdin is closed (the run ended or died)."""

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from wsraw import OP_BINARY, Closed, RawWs  # noqa: E402
import imtest  # noqa: E402

STALE = 30.0        # a Ping outstanding this long: give the connection up


class Pinger:
    def __init__(self, args):
        self.args = args
        self.out = open(args.out, "a", buffering=1)
        self.end = time.monotonic() + args.duration
        self.stop = asyncio.Event()
        self.rng = random.Random(args.seed)
        self.pids = {}          # slot -> pid of its current session
        self.next_id = 0

    def write(self, **kw):
        self.out.write(json.dumps(kw) + "\n")

    def ended(self):
        return self.stop.is_set() or time.monotonic() >= self.end

    async def slot(self, name, port, device):
        tries_same = 0
        while not self.ended():
            r = await self.session(name, port, device, tries_same)
            if r == "same-worker":
                tries_same += 1
                continue
            tries_same = 0
            if self.ended():
                break
            await asyncio.sleep(0.2)

    async def session(self, name, port, device, tries_same):
        c = RawWs(self.rng, port)
        outstanding = {}        # frame id -> send time
        state = {"pid": None, "authed": False, "goaway_at": None,
                 "auth_id": None}
        auth_ok = asyncio.Event()
        t_conn = time.monotonic()

        def on_frame(f):
            fin, op, payload = f
            now = time.monotonic()
            if op != OP_BINARY:
                return
            try:
                fr = imtest.decode(payload)
            except Exception:
                self.write(ev="undecodable", slot=name, t=now)
                return
            b = imtest.body(fr)
            if b == "pong" and fr.id in outstanding:
                t = outstanding.pop(fr.id)
                self.write(t=t, rtt=now - t, slot=name, pid=state["pid"],
                           authed=state["authed"])
            elif b == "auth_ok" and fr.id == state["auth_id"]:
                state["pid"] = int(fr.auth_ok.session.split(":")[1])
                state["authed"] = True
                auth_ok.set()
            elif b == "error" and fr.id == state["auth_id"]:
                state["auth_error"] = fr.error.code
                auth_ok.set()
            elif b == "goaway":
                if state["goaway_at"] is None:
                    state["goaway_at"] = (now + fr.goaway.reconnect_after_ms
                                          / 1000.0)
                    self.write(ev="goaway", slot=name, pid=state["pid"],
                               t=now,
                               ms=fr.goaway.reconnect_after_ms)

        c.on_frame = on_frame
        why = "closed"
        try:
            await c.open(timeout=5)
            status = await c.handshake(timeout=5)
            if status != 101:
                self.write(ev="handshake", slot=name, status=status,
                           t=time.monotonic())
                return "failed"
            c.start_reader()
            # Auth (retried on UNAVAILABLE) while the pings go on
            pinging = asyncio.ensure_future(self.pings(c, outstanding,
                                                       state))
            try:
                deadline = time.monotonic() + 8
                while not self.ended():
                    self.next_id += 1
                    state["auth_id"] = self.next_id
                    state.pop("auth_error", None)
                    auth_ok.clear()
                    await c.write(c.binary(c.pb(id=state["auth_id"], auth={
                        "token": self.args.token, "device": device})))
                    try:
                        await asyncio.wait_for(auth_ok.wait(), 10)
                    except asyncio.TimeoutError:
                        pass
                    if state["authed"]:
                        break
                    if c.eof or time.monotonic() >= deadline:
                        why = "auth failed"
                        return "failed"
                    await asyncio.sleep(0.3)
                if not state["authed"]:
                    return "failed"
                pid = state["pid"]
                if (name.endswith("1") and tries_same < 6
                        and self.pids.get(name[:-1] + "0") == pid):
                    why = "same worker"
                    return "same-worker"
                self.pids[name] = pid
                self.write(ev="up", slot=name, pid=pid, t=time.monotonic(),
                           after=time.monotonic() - t_conn)
                while not self.ended() and not c.eof:
                    now = time.monotonic()
                    if state["goaway_at"] is not None \
                            and now >= state["goaway_at"]:
                        why = "goaway"
                        break
                    if outstanding and now - min(outstanding.values()) \
                            > STALE:
                        why = "stale"
                        break
                    await asyncio.sleep(0.05)
                if c.eof:
                    why = ("goaway" if state["goaway_at"] is not None
                           else "closed")
            finally:
                pinging.cancel()
        except (Closed, OSError, asyncio.TimeoutError, ConnectionError) as e:
            why = "error %s" % type(e).__name__
        finally:
            c.close()
            for id, t in outstanding.items():
                self.write(t=t, rtt=None, lost=why, slot=name,
                           pid=state["pid"], authed=state["authed"])
            if state["pid"] is not None:
                self.write(ev="down", slot=name, pid=state["pid"],
                           t=time.monotonic(), why=why)
        return why

    async def pings(self, c, outstanding, state):
        try:
            while not self.ended() and not c.eof:
                self.next_id += 1
                id = self.next_id
                t = time.monotonic()
                outstanding[id] = t
                try:
                    await c.write(c.binary(c.pb(id=id, ping={
                        "ts_ms": int(t * 1000)})))
                except Closed:
                    return
                await asyncio.sleep(self.args.interval)
        except asyncio.CancelledError:
            pass

    async def main(self):
        loop = asyncio.get_running_loop()

        def watch_stdin():
            try:
                sys.stdin.buffer.read()
            except Exception:
                pass
            loop.call_soon_threadsafe(self.stop.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
        slots = []
        for i in range(self.args.a):
            slots.append(("A%d" % i, self.args.port_a, "pa%d" % i))
        for i in range(self.args.b):
            slots.append(("B%d" % i, self.args.port_b, "pb%d" % i))
        tasks = [asyncio.ensure_future(self.slot(*s)) for s in slots]
        await asyncio.wait(tasks, timeout=self.args.duration + 60)
        for t in tasks:
            t.cancel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-a", type=int, required=True)
    ap.add_argument("--port-b", type=int, default=0)
    ap.add_argument("--a", type=int, default=2)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.port_b:
        args.b = 0
    asyncio.run(Pinger(args).main())


if __name__ == "__main__":
    main()
