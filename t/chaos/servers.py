"""The servers of the chaos run: one redis-server (appendonly yes), a
FaultProxy in front of it, node A (nginx, 2 workers, im_redis through the
proxy, plus a listener with a 4 KiB send buffer for the slow-reader
scenario) and node B (nginx, 1 worker, straight to Redis, the same token
key), both with the module under test and error_log at info."""

import asyncio
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import imtest  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from imchat import redis_cmd  # noqa: E402

CONF = ("im_drain_window 3s; im_auth_timeout 10s; im_ping_interval 5s; "
        "im_idle_timeout 20s; im_max_frame 64k; im_send_queue 256k; "
        "im_presence_max 200; im_max_sessions_per_user 16; "
        "im_rate 100r/s burst=200 bytes=1m; im_group_max_members 500; ")
MAIN = "worker_rlimit_nofile 8192;"
# im_metrics and im_health of a node, checked at the end of the run
HTTP = ("http { access_log off; server { listen 127.0.0.1:%d; "
        "location = /metrics { im_metrics; } "
        "location = /health { im_health; } } }")


class Cluster:
    def __init__(self, root, module, nginx, signal_nginx, log):
        self.root = root
        self.module = module
        self.nginx_bin = nginx
        self.signal_bin = signal_nginx
        self.log = log
        self.host = socket.gethostname().lower()
        self.redis = None
        self.proxy = None
        self.nodes = {}
        self.http_ports = {}
        self.slow_port = None

    def start(self):
        imtest.NGINX = self.nginx_bin
        imtest.LOG_LEVEL = "info"
        self.redis = imtest.Redis(os.path.join(self.root, "redis"))
        self.redis.start()
        self.proxy = FaultProxy(self.redis.port)
        self.slow_port = imtest.free_port()
        self.http_ports = {"A": imtest.free_port(), "B": imtest.free_port()}
        a = imtest.Nginx(os.path.join(self.root, "nodeA"), self.proxy.addr,
                         CONF + "listen 127.0.0.1:%d sndbuf=4k;"
                         % self.slow_port, workers=2,
                         main_directives=MAIN + HTTP % self.http_ports["A"],
                         module=self.module)
        b = imtest.Nginx(os.path.join(self.root, "nodeB"), self.redis.addr,
                         CONF + "im_token_key %s;" % os.path.join(
                             a.dir, "im.pub"), workers=1,
                         main_directives=MAIN + HTTP % self.http_ports["B"],
                         module=self.module)
        self.nodes = {"A": a, "B": b}
        a.start(timeout=30)
        b.start(timeout=30)
        return self

    def http_get(self, node, path, timeout=5):
        """(status, body text) of GET path on the node's http server."""
        url = "http://127.0.0.1:%d%s" % (self.http_ports[node], path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def token(self, user, exp=3600, footer=b"", **claims):
        return imtest.mint_token(self.nodes["A"].token_seed, sub=user,
                                 exp=exp, footer=footer, **claims)

    def token_of_length(self, user, n):
        """A valid token of exactly n characters (a footer and a padding
        claim make up the length)."""
        for pad in range(0, 4):
            base = self.token(user, footer=b"", pad="p" * pad) if pad else \
                self.token(user)
            # v4.public.<b64(payload+sig)> + "." + b64(footer)
            room = n - len(base) - 1
            if room < 0:
                continue
            k = (room * 3) // 4
            for kk in (k - 1, k, k + 1):
                if kk <= 0:
                    continue
                t = self.token(user, footer=b"f" * kk,
                               **({"pad": "p" * pad} if pad else {}))
                if len(t) == n:
                    return t
        raise ValueError("no token of %d characters" % n)

    def alive_pids(self):
        keys = redis_cmd(self.redis, "KEYS", "im:route:*:alive")
        out = set()
        for k in keys:
            k = k.decode()
            out.add((k.split(":")[2], int(k.split(":")[3])))
        return out

    def live_worker_pids(self):
        out = set()
        for n in self.nodes.values():
            out.update(n.worker_pids(all=True))
        return out

    def redis_used_memory(self):
        info = redis_cmd(self.redis, "INFO", "memory", timeout=2).decode()
        for line in info.splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        return 0

    async def signal_reload(self, node):
        """nginx -s reload (through a wrapper that does not check the
        signalling process's own exit for leaks: it returns from main()
        without freeing its cycle, like nginx -t)."""
        n = self.nodes[node]
        p = await asyncio.create_subprocess_exec(
            self.signal_bin, "-p", n.dir + "/", "-c", n.conf_path, "-s",
            "reload", stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(p.communicate(), 20)
        except asyncio.TimeoutError:
            p.kill()
            return False, "timed out"
        text = out.decode(errors="replace")
        ok = p.returncode == 0
        self.reload_output = getattr(self, "reload_output", []) + [text]
        return ok, text.strip()[-2000:]

    def stop(self):
        for n in self.nodes.values():
            try:
                n.stop(timeout=15)
            except Exception as e:
                self.log("stopping nginx: %r" % e)
        if self.proxy is not None:
            self.proxy.close()
        if self.redis is not None:
            self.redis.stop(kill=False)
