"""The faults of the chaos run, planned up front from the run's
random.Random (so a seed gives the same plan) and carried out on time:

    cut all / cut sub / cut cmd   the FaultProxy closes node A's Redis
                                  links (all, or those of one kind)
    outage                        refuse new links for a while, cut all
    outage, slow recovery         the same, and as the links come back the
                                  command link's replies are held (SCRIPT
                                  LOAD) while the subscription link is not:
                                  messages reach a worker before its link
                                  is ready
    delay cmd / delay sub         hold Redis's replies on one kind of
                                  link (not the other) for a while
    reload A / reload B           nginx -s reload
    sigstop                       SIGSTOP a worker of node A for 16-17 s
                                  (past the alive key's 15 s), SIGCONT
    sigkill                       SIGKILL a worker (the master starts a
                                  new one)
    freeze, close, cut            SIGSTOP a worker of node A for a moment,
                                  close a few honest connections of it,
                                  cut the Redis links, SIGCONT: the worker
                                  reads the clients' EOFs first, then finds
                                  its link gone (their logouts must not be
                                  lost with it)

Every fault ends by itself; restore() ends whatever is still going on.
The windows (stopped workers, kills, reloads) are kept for the checks."""

import asyncio
import collections
import os
import re
import signal
import time

KINDS_WEIGHTS = [
    ("cut all", 2), ("cut sub", 2), ("cut cmd", 2), ("outage", 2),
    ("outage, slow recovery", 3), ("freeze, close, cut", 1.5),
    ("delay cmd", 2), ("delay sub", 2), ("reload A", 1.5), ("reload B", 0.5),
    ("sigkill", 1.2),
]


# the kinds with the narrowest choice of slots first
MUST = ["freeze, close, cut", "reload A", "sigkill", "outage, slow recovery",
        "cut all", "cut sub", "cut cmd", "outage", "delay cmd", "delay sub",
        "outage, slow recovery"]


def _params(rng, kind):
    if kind == "sigkill":
        return {"node": rng.choice(("A", "A", "B")), "pick": rng.random()}
    if kind == "freeze, close, cut":
        return {"pick": rng.random(), "close": rng.randint(2, 5)}
    if kind == "outage":
        return {"seconds": round(rng.uniform(1.5, 5), 2)}
    if kind == "outage, slow recovery":
        return {"seconds": round(rng.uniform(2, 3.5), 2),
                "per_chunk": round(rng.uniform(2.5, 3.5), 2)}
    if kind.startswith("delay"):
        return {"per_chunk": round(rng.uniform(0.3, 2.5), 2),
                "seconds": round(rng.uniform(2, 6), 2)}
    return {}


def plan(rng, duration):
    """[(seconds after the start, kind, params)], sorted.  Every kind of
    MUST happens at least once when the run is long enough; the other
    slots are drawn by weight, within the caps.  While a worker is
    stopped its Redis links stay up (the stalled worker whose alive key
    lapses under a live link): no cut, outage, reload or kill on node A
    in that window."""
    out = []
    end = duration - 6
    nstop = int(duration // 60) if duration >= 60 else (
        1 if duration >= 40 else 0)
    for i in range(nstop):
        lo = 6 + 60 * i
        hi = min(60 * (i + 1), duration) - 32
        if hi >= lo:
            out.append((round(rng.uniform(lo, hi), 2), "sigstop",
                        {"seconds": round(rng.uniform(16, 17), 2),
                         "pick": rng.random()}))
    quiet = [(t - 1, t + p["seconds"] + 3) for t, _, p in out]
    slots = []
    t = rng.uniform(3, 5)
    for _ in range(1000):
        if t >= end:
            break
        slots.append(round(t, 2))
        t += rng.uniform(2.5, 5.5)
    caps = {"sigkill": max(1, int(duration // 30)),
            "reload": max(1, int(duration // 20))}
    used = collections.Counter()

    quiet_end = max([b for _, b in quiet] + [0])
    first_freeze = [None]

    def fits(kind, t):
        # a freeze's ghost routes must outlive the run: its worker is not
        # stopped, reloaded or killed after it
        if kind == "freeze, close, cut" and t <= quiet_end:
            return False
        if first_freeze[0] is not None and t >= first_freeze[0] and (
                kind in ("reload A", "sigkill")):
            return False
        if kind == "sigkill" and t > duration - 18:
            return False
        if kind.startswith("reload") and t > duration - 10:
            return False
        cap = "reload" if kind.startswith("reload") else kind
        if cap in caps and used[cap] >= caps[cap]:
            return False
        if any(a <= t <= b for a, b in quiet):
            return (kind.startswith("delay") or kind == "reload B"
                    or kind == "sigkill")
        return True

    def take(kind, t):
        used["reload" if kind.startswith("reload") else kind] += 1
        if kind == "freeze, close, cut" and (first_freeze[0] is None
                                             or t < first_freeze[0]):
            first_freeze[0] = t

    kinds = [None] * len(slots)
    free = list(range(len(slots)))
    rng.shuffle(free)
    for kind in MUST:
        for i in free:
            if fits(kind, slots[i]):
                kinds[i] = kind
                take(kind, slots[i])
                free.remove(i)
                break
    names = [k for k, _ in KINDS_WEIGHTS]
    weights = [w for _, w in KINDS_WEIGHTS]
    for i in range(len(slots)):
        for _ in range(50):
            if kinds[i] is not None:
                break
            k = rng.choices(names, weights)[0]
            if fits(k, slots[i]):
                kinds[i] = k
                take(k, slots[i])
        if kinds[i] is None:
            kinds[i] = "delay sub"
    for t, kind in zip(slots, kinds):
        p = _params(rng, kind)
        if kind == "sigkill" and any(a <= t <= b for a, b in quiet):
            p["node"] = "B"
        out.append((t, kind, p))
    return sorted(out, key=lambda e: e[0])


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as fp:
            st = fp.read()
        return st[st.rindex(")") + 2:].split()[0]
    except OSError:
        return None


class Faults:
    def __init__(self, rng, duration, cluster, monitor, log):
        self.rng = rng
        self.duration = duration
        self.cluster = cluster
        self.monitor = monitor
        self.log = log
        self.plan = plan(rng, duration)
        self.done = collections.Counter()
        self.skipped = collections.Counter()
        self.events = []            # (t, kind, detail)
        self.stopped = {}           # pid -> (t_stop, node)
        self.stop_windows = []      # (pid, t_stop, t_cont)
        self.killed = []            # (t, pid, node)
        self.reloads = []           # (t, node, old pids)
        self.tasks = []
        self.t0 = None
        self._runner = None
        self.pop = None             # the honest population (drop_on)

    def event(self, kind, detail=""):
        t = time.monotonic()
        self.events.append((round(t - self.t0, 2), kind, detail))
        self.log("fault %6.2fs %s %s" % (t - self.t0, kind, detail))

    async def start(self):
        self.t0 = time.monotonic()
        self._runner = asyncio.ensure_future(self._run())

    async def _run(self):
        for at, kind, p in self.plan:
            delay = self.t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self._do(kind, p)
            except Exception as e:
                self.skipped["%s: %r" % (kind, e)] += 1
                self.event("error", "%s: %r" % (kind, e))

    async def _do(self, kind, p):
        c = self.cluster
        px = c.proxy
        if kind.startswith("cut"):
            which = kind.split()[1]
            n = px.cut(None if which == "all" else which)
            self.done[kind] += 1
            self.event(kind, "%d links" % n)
        elif kind == "outage":
            px.refuse(p["seconds"])
            n = px.cut(None)
            self.done[kind] += 1
            self.event(kind, "refusing %.1fs, cut %d links" % (
                p["seconds"], n))
        elif kind == "outage, slow recovery":
            px.refuse(None)
            n = px.cut(None)
            self.done[kind] += 1
            self.event(kind, "refusing %.1fs, cut %d links, then the cmd "
                       "link's replies held %.1fs" % (
                           p["seconds"], n, p["per_chunk"]))
            self.tasks.append(asyncio.ensure_future(
                self._slow_back(p["seconds"], p["per_chunk"])))
        elif kind.startswith("delay"):
            which = kind.split()[1]
            px.delay(which, p["per_chunk"])
            self.done[kind] += 1
            self.event(kind, "%.2fs per chunk for %.1fs" % (
                p["per_chunk"], p["seconds"]))
            self.tasks.append(asyncio.ensure_future(
                self._undelay(which, p["seconds"])))
        elif kind.startswith("reload"):
            node = kind.split()[1]
            n = c.nodes[node]
            old = n.worker_pids(all=True)
            self.monitor.expect_retire(old)
            ok, out = await c.signal_reload(node)
            self.reloads.append((time.monotonic(), node, old))
            self.done[kind] += 1
            self.event(kind, "old workers %s%s" % (
                old, "" if ok else ", nginx -s reload failed: " + out))
            if not ok:
                self.monitor.violation("reload", "nginx -s reload of node "
                                       "%s failed: %s" % (node, out))
            if re.search(r"AddressSanitizer|LeakSanitizer|runtime error:",
                         out):
                self.monitor.violation("sanitizer", "nginx -s reload of "
                                       "node %s: %s" % (node, out[:2000]))
        elif kind == "sigstop":
            pids = [x for x in c.nodes["A"].worker_pids()
                    if x not in self.stopped]
            if not pids:
                self.skipped[kind + " (no worker)"] += 1
                return
            pid = pids[int(p["pick"] * len(pids)) % len(pids)]
            self.stopped[pid] = (time.monotonic(), "A")
            os.kill(pid, signal.SIGSTOP)
            self.done[kind] += 1
            self.event(kind, "worker %d for %.1fs" % (pid, p["seconds"]))
            self.tasks.append(asyncio.ensure_future(
                self._cont(pid, p["seconds"])))
        elif kind == "freeze, close, cut":
            pids = [x for x in c.nodes["A"].worker_pids()
                    if x not in self.stopped]
            if not pids or self.pop is None:
                self.skipped[kind + " (no worker)"] += 1
                return
            pid = pids[int(p["pick"] * len(pids)) % len(pids)]
            t = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                for _ in range(200):
                    if _state(pid) in ("T", "t", None):
                        break
                    await asyncio.sleep(0.005)
                closed = self.pop.drop_on(pid, p["close"])
                await asyncio.sleep(0.15)
                n = px.cut(None)
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.stop_windows.append((pid, t, time.monotonic()))
            self.done[kind] += 1
            self.event(kind, "worker %d: %d sessions closed, %d links cut" % (
                pid, closed, n))
        elif kind == "sigkill":
            node = p["node"]
            pids = [x for x in c.nodes[node].worker_pids()
                    if x not in self.stopped]
            if not pids:
                self.skipped[kind + " (no worker)"] += 1
                return
            pid = pids[int(p["pick"] * len(pids)) % len(pids)]
            self.monitor.expect_kill(pid)
            os.kill(pid, signal.SIGKILL)
            self.killed.append((time.monotonic(), pid, node))
            self.done[kind] += 1
            self.event(kind, "worker %d of node %s" % (pid, node))

    async def _slow_back(self, seconds, per_chunk):
        px = self.cluster.proxy
        try:
            # messages for node A's users while its link is down ...
            await asyncio.sleep(min(0.5, seconds / 2))
            if self.pop is not None:
                self.pop.burst(8)
            await asyncio.sleep(max(0.0, seconds - 0.5))
            px.delay("cmd", per_chunk)
            px.allow()
            # ... and while it comes back, the subscription first
            for _ in range(3):
                await asyncio.sleep(per_chunk / 3)
                if self.pop is not None:
                    self.pop.burst(8)
            await asyncio.sleep(2)
        finally:
            px.allow()
            px.delay("cmd", 0)
            self.event("slow recovery ends")

    async def _undelay(self, which, seconds):
        try:
            await asyncio.sleep(seconds)
        finally:
            self.cluster.proxy.delay(which, 0)
            self.event("delay %s ends" % which)

    async def _cont(self, pid, seconds):
        try:
            await asyncio.sleep(seconds)
        finally:
            self._sigcont(pid)

    def _sigcont(self, pid):
        if pid not in self.stopped:
            return
        t, node = self.stopped.pop(pid)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.stop_windows.append((pid, t, time.monotonic()))
        self.event("sigcont", "worker %d after %.1fs" % (
            pid, time.monotonic() - t))

    async def restore(self):
        """End every fault now: no more planned ones, links allowed,
        replies not held, stopped workers continued."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        for pid in list(self.stopped):
            self._sigcont(pid)
        px = self.cluster.proxy
        px.allow()
        px.delay("cmd", 0)
        px.delay("sub", 0)
        self.planned_left = sum(1 for at, _, _ in self.plan
                                if self.t0 is None
                                or self.t0 + at > time.monotonic())

    def report(self):
        return {
            "by_kind": dict(sorted(self.done.items())),
            "total": sum(self.done.values()),
            "skipped": dict(self.skipped),
            "plan": [[at, k, p] for at, k, p in self.plan],
            "events": self.events,
        }
