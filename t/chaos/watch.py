"""The continuous checks of the chaos run: every error.log and stderr.log
(read as they grow) for sanitizer reports, [alert]/[crit]/[emerg] lines
and worker exits; the RSS of every nginx process and Redis's
used_memory, sampled; the masters still running."""

import asyncio
import os
import re
import time

SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:")
REPORT_START = re.compile(r"==\d+==ERROR: (AddressSanitizer|LeakSanitizer)"
                          r"|runtime error:")
BAD_LEVEL = re.compile(r"\[(alert|crit|emerg)\]")
NGX_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[")
UBSAN = re.compile(r"([^ ]+:\d+):\d+: runtime error: (.*)")
HEX = re.compile(r"0x[0-9a-f]+")
FRAME = re.compile(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S+)")
EXIT = re.compile(r"(\w+) process (\d+) exited (?:on signal (\d+)|with code "
                  r"(\d+))")


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as fp:
            for line in fp:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Monitor:
    def __init__(self, cluster, violation, log):
        self.cluster = cluster
        self._violation = violation
        self.log = log
        self.files = {}             # path -> [offset, carry]
        self.killed = set()         # pids we SIGKILLed
        self.retiring = set()       # pids told to exit (reload, stop)
        self.sanitizer_reports = []  # (path, offset, line)
        self.sanitizer_lines = 0
        self.bad_lines = []
        self.exits = []             # (node, pid, signal, code, expected)
        self.exit_times = []        # (monotonic time seen, node, pid)
        self.deaths = []
        self.rss_max = {}           # pid -> max KiB
        self.rss_max_kib = 0
        self.rss_max_pid = None
        self.redis_max = 0
        self.samples = 0
        self.task = None
        self.stopping = False
        self.final = False

    def violation(self, kind, text):
        self._violation(kind, text)

    def add_file(self, node, path):
        self.files.setdefault(path, [0, b"", node])

    def expect_kill(self, pid):
        self.killed.add(pid)

    def expect_retire(self, pids):
        self.retiring.update(pids)

    # -- logs

    def scan(self):
        for path, st in self.files.items():
            try:
                with open(path, "rb") as fp:
                    fp.seek(st[0])
                    data = fp.read(64 << 20)
            except FileNotFoundError:
                continue
            if not data:
                continue
            start = st[0] - len(st[1])
            st[0] += len(data)
            text = st[1] + data
            lines = text.split(b"\n")
            st[1] = lines.pop()
            off = start
            for raw in lines:
                self._line(st[2], path, off, raw.decode("utf-8", "replace"))
                off += len(raw) + 1

    def _line(self, node, path, off, line):
        if SANITIZER.search(line):
            self.sanitizer_lines += 1
            if REPORT_START.search(line):
                self.sanitizer_reports.append((path, off, line.strip()))
                self.violation("sanitizer", "%s: %s" % (path, line.strip()))
        m = EXIT.search(line)
        if m:
            pid, sig, code = int(m.group(2)), m.group(3), m.group(4)
            sig = int(sig) if sig else None
            code = int(code) if code else None
            if sig == 9 and pid in self.killed:
                why = "killed by the run"
            elif sig is None and code == 0 and (pid in self.retiring
                                                 or self.stopping):
                why = "retired"
            else:
                why = None
            self.exits.append((node, pid, sig, code, why))
            self.exit_times.append((time.monotonic(), node, pid))
            if why is None:
                self.deaths.append(line.strip())
                self.violation("worker death", "node %s: %s" % (
                    node, line.strip()))
            return
        if BAD_LEVEL.search(line):
            self.bad_lines.append(line.strip())
            self.violation("alert/crit/emerg", "node %s: %s" % (
                node, line.strip()))

    def report_excerpt(self, path, off, lines=45):
        """The report starting at byte off, without the nginx log lines
        that other connections wrote in between."""
        try:
            with open(path, "rb") as fp:
                fp.seek(max(0, off))
                data = fp.read(64 << 10).decode("utf-8", "replace")
        except OSError:
            return ""
        out = [l for l in data.split("\n") if not NGX_LINE.match(l)]
        return "\n".join(out[:lines])

    def distinct_reports(self):
        """{what: count}: the sanitizer reports told apart by their kind
        and the first frame of the module (UBSan: the source location)."""
        out = {}
        for path, off, line in self.sanitizer_reports:
            m = UBSAN.search(line)
            if m:
                key = "UBSan %s: %s" % (m.group(1), HEX.sub(
                    "0x…", m.group(2))[:120])
            else:
                kind = re.search(r"ERROR: (\w+): ([\w-]+)", line)
                key = "%s %s" % (kind.group(1), kind.group(2)) if kind \
                    else line[:80]
                text = self.report_excerpt(path, off, 80)
                for f in FRAME.finditer(text):
                    if "ngx_stream_im" in f.group(1):
                        key += " in %s %s" % (f.group(1), os.path.basename(
                            f.group(2)))
                        break
                freed = text.find("freed by thread")
                if freed >= 0:
                    for f in FRAME.finditer(text[freed:]):
                        if "ngx_stream_im" in f.group(1) \
                                and "free" not in f.group(1):
                            key += ", freed in %s" % f.group(1)
                            break
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # -- memory

    def sample(self):
        c = self.cluster
        for name, n in c.nodes.items():
            for pid in n.worker_pids(all=True):
                k = rss_kib(pid)
                if k > self.rss_max.get(pid, 0):
                    self.rss_max[pid] = k
                if k > self.rss_max_kib:
                    self.rss_max_kib = k
                    self.rss_max_pid = pid
            if not n.running and not self.stopping:
                self.violation("nginx master", "the master of node %s "
                               "exited (%s)" % (name, n.proc.returncode))
        try:
            used = c.redis_used_memory()
            self.redis_max = max(self.redis_max, used)
        except Exception:
            pass
        self.samples += 1

    async def run(self, interval=1.0):
        async def loop():
            while True:
                try:
                    self.scan()
                    self.sample()
                except Exception as e:
                    self.log("monitor: %r" % e)
                await asyncio.sleep(interval)
        self.task = asyncio.ensure_future(loop())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
