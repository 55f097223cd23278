"""Redis replication and Redis Sentinel on loopback, for the tests of
several nodes and of failover.

    Sentinel        one redis-sentinel process with its own config file
    Deployment      a primary, replicas and sentinels watching them as
                    MASTER; .im_redis is the `im_redis` value for nginx,
                    .primary() asks the sentinels which Redis is primary;
                    with proxied=True the replicas replicate through a
                    FaultProxy (.proxy) that can make them lag

Everything listens on 127.0.0.1 only and waits are bounded.
"""

import os
import shutil
import signal
import subprocess
import time

import imtest
from faultproxy import FaultProxy
from imtest import Redis, free_port, wait_until

REDIS_SENTINEL = shutil.which("redis-sentinel")
MASTER = "mymaster"


class Sentinel:
    """redis-sentinel on 127.0.0.1:port monitoring one master."""

    def __init__(self, dir, master_port, port=None, quorum=2,
                 down_after_ms=1000, failover_timeout_ms=10000,
                 password=None, master_password=None, name=MASTER):
        self.dir = str(dir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.name = name
        self.password = password
        self.conf = os.path.join(self.dir, "sentinel.conf")
        self.log = os.path.join(self.dir, "sentinel.log")
        lines = [
            "port %d" % self.port,
            "bind 127.0.0.1",
            "daemonize no",
            "dir %s" % self.dir,
            "logfile %s" % self.log,
            "sentinel resolve-hostnames no",
            "sentinel monitor %s 127.0.0.1 %d %d" % (name, master_port,
                                                     quorum),
            "sentinel down-after-milliseconds %s %d" % (name,
                                                        down_after_ms),
            "sentinel failover-timeout %s %d" % (name, failover_timeout_ms),
            "sentinel parallel-syncs %s 1" % name,
        ]
        if master_password:
            lines.append("sentinel auth-pass %s %s" % (name, master_password))
        if password:
            lines.append("requirepass %s" % password)
        with open(self.conf, "w") as fp:
            fp.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10):
        cmd = ([REDIS_SENTINEL, self.conf] if REDIS_SENTINEL
               else [imtest.REDIS_SERVER, self.conf, "--sentinel"])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until(lambda: self._answers(), timeout, 0.05,
                   "redis-sentinel on %s (log %s)" % (self.addr, self.log))
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError("redis-sentinel exited: %s" % self.log_tail())
        return imtest.port_open(self.port)

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as fp:
                return fp.read()[-2000:]
        except OSError:
            return ""

    def cli(self, *args, timeout=10):
        auth = (["--no-auth-warning", "-a", self.password]
                if self.password else [])
        r = subprocess.run([imtest.REDIS_CLI, "-h", "127.0.0.1", "-p",
                            str(self.port)] + auth + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout,
                           check=True)
        return r.stdout.strip()

    def master(self):
        """(ip, port) the sentinel gives for the master, or None."""
        out = self.cli("SENTINEL", "get-master-addr-by-name", self.name)
        parts = out.split()
        return (parts[0], int(parts[1])) if len(parts) == 2 else None

    def stop(self, kill=False):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class Deployment:
    """A primary with `replicas` replicas and `sentinels` sentinels, all
    on loopback under dir; fsync_always makes every Redis fsync each
    write (a SIGKILL then loses only what was not replicated)."""

    def __init__(self, dir, replicas=1, sentinels=3, password=None,
                 sentinel_password=None, down_after_ms=1000,
                 failover_timeout_ms=10000, proxied=False):
        dir = str(dir)
        self.password = password
        self.redis = [Redis(os.path.join(dir, "redis0"), password=password)]
        primary = self.redis[0]
        # proxied: the replicas replicate through a FaultProxy, whose
        # delay("cmd", s) makes them lag (a sentinel would repoint them
        # at the primary itself after failover_timeout_ms)
        self.proxy = FaultProxy(primary.port) if proxied else None
        upstream = self.proxy.port if proxied else primary.port
        for i in range(replicas):
            self.redis.append(Redis(
                os.path.join(dir, "redis%d" % (i + 1)), password=password,
                args=["--replicaof", "127.0.0.1", upstream]))
        quorum = min(2, sentinels)
        self.sentinels = [
            Sentinel(os.path.join(dir, "sentinel%d" % i), primary.port,
                     quorum=quorum, down_after_ms=down_after_ms,
                     failover_timeout_ms=failover_timeout_ms,
                     password=sentinel_password, master_password=password)
            for i in range(sentinels)]

    @property
    def im_redis(self):
        return "sentinel:%s/%s" % (",".join(s.addr for s in self.sentinels),
                                   MASTER)

    def start(self, timeout=30):
        for r in self.redis:
            r.start()
        for s in self.sentinels:
            s.start()
        self.wait_settled(self.redis[0], timeout)
        return self

    def by_port(self, port):
        return next(r for r in self.redis if r.port == port)

    def primary(self):
        """The Redis that a majority of the running sentinels name."""
        votes = {}
        for s in self.sentinels:
            if s.proc is None:
                continue
            try:
                m = s.master()
            except subprocess.SubprocessError:
                continue
            if m:
                votes[m[1]] = votes.get(m[1], 0) + 1
        if not votes:
            return None
        port = max(votes, key=votes.get)
        return self.by_port(port)

    def wait_settled(self, primary, timeout=30):
        """Wait until every running sentinel names `primary`, knows every
        other sentinel, and every other running Redis replicates from it
        with its link up."""
        others = [r for r in self.redis if r is not primary and r.running]
        running = [s for s in self.sentinels if s.proc is not None]

        def settled():
            for s in running:
                try:
                    if s.master() != ("127.0.0.1", primary.port):
                        return False
                    n = s.cli("SENTINEL", "sentinels", MASTER).count("name")
                except subprocess.SubprocessError:
                    return False
                if n < len(running) - 1:
                    return False
            try:
                info = primary.cli("INFO", "replication")
            except subprocess.SubprocessError:
                return False
            if "role:master" not in info:
                return False
            return info.count("state=online") >= len(others)

        wait_until(settled, timeout, 0.1,
                   "sentinels and replicas settled on %s" % primary.addr)

    @staticmethod
    def role(redis):
        """"master", "slave", or "" when redis does not answer (a Redis
        being turned into a replica drops its clients)."""
        try:
            info = redis.cli("INFO", "replication")
        except subprocess.SubprocessError:
            return ""
        for line in info.splitlines():
            if line.startswith("role:"):
                return line[5:].strip()
        return ""

    def wait_failover(self, old, timeout=60):
        """After `old` died or was failed over: wait until the sentinels
        name another Redis and it is a master; returns it."""
        def promoted():
            p = self.primary()
            if p is None or p is old or not p.running:
                return None
            return p if self.role(p) == "master" else None

        return wait_until(promoted, timeout, 0.05,
                          "a replica promoted after %s" % old.addr)

    def stop(self):
        for s in self.sentinels:
            s.stop(kill=True)
        for r in self.redis:
            r.stop(kill=True)
        if self.proxy is not None:
            self.proxy.close()
