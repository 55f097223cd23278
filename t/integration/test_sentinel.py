"""Redis under Sentinel, replication-backed acknowledgement, and the
Redis login settings (im_redis sentinel:..., im_redis_wait,
im_redis_password, im_redis_sentinel_password, im_redis_db).

Every Redis and sentinel is a real redis-server / redis-sentinel on
127.0.0.1 started by the test (imsentinel.Deployment).  The failover
tests SIGKILL the primary under 30 pairs of chatting clients and count:
with im_redis_wait 1 every acknowledged message must arrive and be on
the promoted replica; with im_redis_wait 0 the figures are printed to
show what the setting buys.  Waits are bounded; nothing asserts that
something was fast."""

import asyncio
import os
import socket
import subprocess
import threading
import time

import pytest

from imchat import id_key, login, poll, redis_cmd, xrange
from imload import ChatLoad
from imsentinel import MASTER, Deployment, Sentinel
from imtest import body, error_code, run, wait_until

RECOVERY = 30


@pytest.fixture
def deployment(tmp_path):
    made = []

    def factory(**kw):
        d = Deployment(tmp_path / ("redis%d" % len(made)), **kw)
        made.append(d)
        return d.start()

    yield factory
    for d in made:
        d.stop()


def master_lines(n):
    return [line for line in n.error_log.splitlines()
            if "sentinel" in line and "master" in line]


async def chat_once(n, a="alice", b="bob", text=b"hi", retry=RECOVERY):
    alice = await login(n, a, retry=retry)
    bob = await login(n, b, retry=retry)
    try:
        ack = await alice.send_ok(b, text, cmid="c-%s" % text.decode())
        await bob.until(lambda: any(m.msg_id == ack.msg_id
                                    for m in bob.live_messages()),
                        10, "the message live")
        return ack
    finally:
        await alice.close()
        await bob.close()


# --------------------------------------------------------------------------
# Sentinel

def test_workers_ask_the_sentinels_for_the_master(nginx, deployment):
    """Each worker resolves the master through a sentinel (one of the
    three is down and is skipped), checks its ROLE, and chats on it."""
    d = deployment(replicas=1, sentinels=3)
    d.sentinels[0].stop(kill=True)
    n = nginx(workers=2, redis_addr=d.im_redis)

    ack = run(chat_once(n))
    primary = d.redis[0]
    assert [i for i, _ in xrange(primary, "bob")] == [ack.msg_id]
    log = n.error_log
    assert log.count('master "%s" is 127.0.0.1:%d' % (MASTER, primary.port)) \
        >= 2, master_lines(n)


def test_a_switch_is_followed_and_the_old_master_gets_no_write(
        nginx, deployment):
    """SENTINEL FAILOVER demotes a live primary: the workers follow
    +switch-master, chat on the new one, and nothing is written to the
    demoted one after the switch (its replication offset only follows)."""
    d = deployment(replicas=1, sentinels=3)
    n = nginx(workers=2, redis_addr=d.im_redis)
    old = d.redis[0]
    run(chat_once(n, text=b"before"))

    mark = n.log_mark()
    d.sentinels[1].cli("SENTINEL", "FAILOVER", MASTER)
    new = d.wait_failover(old)
    d.wait_settled(new)
    n.wait_log(r"master \"%s\" switched from 127.0.0.1:%d to 127.0.0.1:%d"
               % (MASTER, old.port, new.port), RECOVERY, since=mark)
    poll(lambda: n.error_log[mark:].count("redis 127.0.0.1:%d is up"
                                          % new.port) >= 2, RECOVERY)

    ack = run(chat_once(n, text=b"after"))
    assert ack.msg_id in [i for i, _ in xrange(new, "bob")]
    wait_until(lambda: d.role(old) == "slave", 30, 0.1,
               "the old primary demoted")
    # the demoted Redis has what the new master replicated to it, nothing
    # of its own: its inbox is the new master's
    poll(lambda: xrange(old, "bob") == xrange(new, "bob"), 10)


def test_wait_one_replica_before_the_send_ack(nginx, deployment):
    """im_redis_wait 1: a SendAck comes once the replica has the message;
    it is on the replica when the client hears of it."""
    d = deployment(replicas=1, sentinels=1)
    n = nginx(redis_addr=d.im_redis,
              stream_directives="im_redis_wait 1 1s;")
    replica = d.redis[1]

    async def go():
        alice = await login(n, "alice", retry=RECOVERY)
        for i in range(20):
            ack = await alice.send_ok("bob", b"m%d" % i, cmid="w%d" % i)
            # read from the replica right after the ack
            assert ack.msg_id in [m for m, _ in xrange(replica, "bob")]
        await alice.close()

    run(go())


def test_wait_without_replicas_answers_unavailable_then_dedups(
        nginx, redis):
    """im_redis_wait 1 on a Redis without replicas: the Send is stored
    but answered UNAVAILABLE (the WAIT timed out); once a replica is
    attached, the same client_msg_id is acknowledged with the same
    msg_id, stored once."""
    n = nginx(stream_directives="im_redis_wait 1 200ms;")

    async def go():
        alice = await login(n, "alice")
        f = await alice.send("bob", b"x", cmid="same")
        assert body(f) == "error", f
        assert f.error.code == error_code("UNAVAILABLE"), f
        stored = xrange(redis, "bob")
        assert len(stored) == 1

        import imtest
        replica = imtest.Redis(os.path.join(redis.dir, "replica"),
                               args=["--replicaof", "127.0.0.1",
                                     redis.port]).start()
        try:
            wait_until(lambda: "state=online" in redis.cli(
                "INFO", "replication"), 20, 0.1, "the replica online")
            ack = await alice.send_ok("bob", b"x", cmid="same")
            assert ack.msg_id == stored[0][0]
            assert len(xrange(redis, "bob")) == 1
        finally:
            replica.stop(kill=True)
        await alice.close()

    run(go())
    assert "0 of 1 replicas in 200 ms, 1 sends answered as unavailable" \
        in n.error_log


# --------------------------------------------------------------------------
# failover under traffic

PAIRS = 30
LAG = 1.5


def failover_figures(load, killed_at, promoted_at):
    """What the clients saw around the kill, as LoadReport lines."""
    errs = sorted(t - killed_at for c in load.clients
                  for t in c.error_times if t >= killed_at)
    acks = sorted(t - killed_at for c in load.clients
                  for t in c.ack_times if t >= killed_at)
    return errs, [
        "replicas %.1f s behind; primary SIGKILLed; sentinels named a "
        "replica after %.2f s" % (LAG, promoted_at - killed_at),
        "Sends answered UNAVAILABLE after the kill: %d, from +%.2f s to "
        "+%.2f s" % (len(errs), errs[0] if errs else 0,
                     errs[-1] if errs else 0),
        "first SendAck after the kill at +%.2f s, first after the "
        "promotion at +%.2f s" % (
            acks[0] if acks else -1,
            next((a for a in acks if a >= promoted_at - killed_at), -1)),
    ]


def not_on(redis, load):
    """Acknowledged messages missing from the recipients' inboxes on
    redis: [(sender, cmid, msg_id)]."""
    missing = []
    inbox = {}
    for c in load.clients:
        if c.peer not in inbox:
            inbox[c.peer] = {i for i, _ in xrange(redis, c.peer)}
        for cmid, mid in c.acked().items():
            if mid not in inbox[c.peer]:
                missing.append((c.user, cmid, mid))
    return missing


def vanished_copies(redis, load):
    """{client_msg_id} of messages a recipient got live under a msg_id
    that is not in its inbox on redis while the sender's acknowledged
    copy (another msg_id) is: a send stored on the old primary, published
    by its script, answered UNAVAILABLE (not replicated) and lost with
    the primary, then sent again."""
    by_user = {c.user: c for c in load.clients}
    out = set()
    for r in load.clients:
        stored = {i for i, _ in xrange(redis, r.user)}
        acked = by_user[r.peer].acked()
        for mid, m in r.got.items():
            cmid = m.client_msg_id
            if (mid not in stored and cmid in acked and acked[cmid] != mid
                    and acked[cmid] in stored):
                out.add(cmid)
    return out


@pytest.mark.parametrize("replicas", [1, 0])
def test_primary_killed_under_traffic(nginx, deployment, replicas):
    """30 pairs chat through 2 workers; the replicas fall LAG seconds
    behind, the primary is SIGKILLed and the sentinels promote a replica.  With im_redis_wait 1 every
    acknowledged message arrives (after dedup, in order) and is stored on
    the new primary; clients stay connected (the sessions outlive the
    link) or come back by themselves.  With im_redis_wait 0 the same run
    only reports what was lost."""
    # two replicas: after the promotion one is left to confirm writes;
    # they lag behind by up to LAG seconds before the kill
    d = deployment(replicas=2, sentinels=3, proxied=True,
                   failover_timeout_ms=120000)
    wait = "im_redis_wait %d 1s;" % replicas if replicas else ""
    n = nginx(workers=2, redis_addr=d.im_redis, stream_directives=wait)
    old = d.redis[0]

    async def go():
        load = ChatLoad(n, PAIRS, interval=0.1, max_msgs=2000,
                        prefix="f%d" % replicas, deadline=150)
        await load.start()
        await load.wait_acked(600, timeout=60)
        # the replication stream is held back, as on a slow network
        d.proxy.delay("cmd", LAG * 2)
        await asyncio.sleep(LAG)
        killed_at = time.monotonic()
        old.stop(kill=True)
        d.proxy.cut()
        new = await asyncio.get_running_loop().run_in_executor(
            None, d.wait_failover, old, 60)
        promoted_at = time.monotonic()
        await load.wait_acked(600, timeout=60)
        report = await load.finish("failover, im_redis_wait %d" % replicas)
        errs, lines = failover_figures(load, killed_at, promoted_at)
        missing = not_on(new, load)
        vanished = vanished_copies(new, load)
        report.extra += lines
        report.extra.append("acknowledged messages not on the promoted "
                            "replica: %d" % len(missing))
        report.extra.append(
            "unacknowledged copies seen live, then lost with the primary "
            "(the sender's retry stored them again under a new msg_id): %d"
            % len(vanished))
        return report, missing, vanished

    report, missing, vanished = run(go(), timeout=300)
    report.print()
    if replicas:
        # copies seen live and lost with the primary are not duplicates of
        # what is stored; anything else is checked as everywhere
        report.dup_after_dedup = [d for d in report.dup_after_dedup
                                  if d[1] not in vanished]
        report.ack_conflicts = [a for a in report.ack_conflicts
                                if not (a[1] in vanished
                                        and a[2] != "body")]
        report.check()
        assert not missing, missing[:10]
    else:
        # what N=0 promises: sessions come back and sends go on
        assert not report.not_done, report.text()


# --------------------------------------------------------------------------
# AUTH and SELECT

def test_password_acl_user_and_db(nginx, tmp_path):
    """im_redis_password (plain and "user password" for an ACL user) and
    im_redis_db: the workers log in on both sockets and keep their keys
    in that database; a wrong password is refused at setup and logins
    are answered UNAVAILABLE."""
    import imtest
    r = imtest.Redis(tmp_path / "redis-pw", password="s3cret").start()
    try:
        r.cli("ACL", "SETUSER", "im", "on", ">ims3cret", "~*", "&*", "+@all")
        (tmp_path / "pw").write_text("s3cret\n")
        (tmp_path / "acl").write_text("im ims3cret\n")
        (tmp_path / "bad").write_text("wrong\n")
        for pw, db in (("pw", 0), ("acl", 5)):
            n = nginx(workers=2, redis_addr=r.addr, stream_directives=(
                "im_redis_password %s; im_redis_db %d;"
                % (tmp_path / pw, db)))
            ack = run(chat_once(n, text=pw.encode()))
            got = r.cli("-n", db, "XRANGE", "im:{u:bob}:inbox", "-", "+")
            assert ack.msg_id in got
            if db:
                assert r.cli("XLEN", "im:{u:bob}:inbox") == "1"
            n.stop()

        n = nginx(redis_addr=r.addr, stream_directives=(
            "im_redis_password %s;" % (tmp_path / "bad")))
        n.wait_log(r"redis refused setup: WRONGPASS", 10)

        async def refused():
            from imchat import Chat
            c = await Chat.connect(n.url)
            f = await c.auth(n.token("alice"))
            await c.close()
            return f

        f = run(refused())
        assert body(f) == "error" and f.error.code == error_code(
            "UNAVAILABLE"), f
        assert "wrong" not in n.error_log
    finally:
        r.stop(kill=True)


def test_sentinels_and_redis_with_passwords(nginx, deployment, tmp_path):
    """Sentinels with requirepass and a Redis with requirepass: both
    im_redis_sentinel_password and im_redis_password are used, and a
    failover is still followed."""
    d = deployment(replicas=1, sentinels=3, password="rpw",
                   sentinel_password="spw")
    (tmp_path / "rpw").write_text("rpw\n")
    (tmp_path / "spw").write_text("spw\n")
    n = nginx(workers=2, redis_addr=d.im_redis, stream_directives=(
        "im_redis_password %s; im_redis_sentinel_password %s;"
        % (tmp_path / "rpw", tmp_path / "spw")))
    run(chat_once(n, text=b"one"))

    old = d.redis[0]
    mark = n.log_mark()
    old.stop(kill=True)
    new = d.wait_failover(old)
    poll(lambda: n.error_log[mark:].count("redis 127.0.0.1:%d is up"
                                          % new.port) >= 2, RECOVERY)
    ack = run(chat_once(n, text=b"two"))
    assert ack.msg_id in [i for i, _ in xrange(new, "bob")]
    assert "spw" not in n.error_log and "rpw" not in n.error_log


# --------------------------------------------------------------------------
# sentinels that do not help

class FakeSentinel:
    """A loopback server speaking just enough RESP: `answer` is the raw
    reply to SENTINEL get-master-addr-by-name (None: never answer
    anything), SUBSCRIBE and PING are answered as a sentinel would."""

    def __init__(self, answer, pushes=(), push_every=0.01, auth=None,
                 refuse_subscribe=False):
        self.answer = answer
        self.refuse_subscribe = refuse_subscribe
        self.pushes = list(pushes)      # sent after SUBSCRIBE, in turn
        self.push_every = push_every
        self.auth = auth                # raw reply to AUTH
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.conns = []
        self.queries = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line.startswith(b"*"):
                    return
                args = []
                for _ in range(int(line[1:])):
                    n = int(f.readline()[1:])
                    args.append(f.read(n + 2)[:-2])
                cmd = args[0].upper()
                if self.answer is None:
                    continue
                if cmd == b"SENTINEL":
                    self.queries += 1
                    c.sendall(self.answer)
                elif cmd == b"AUTH" and self.auth is not None:
                    c.sendall(self.auth)
                elif cmd == b"SUBSCRIBE" and self.refuse_subscribe:
                    c.sendall(b"-NOPERM no channel for you\r\n")
                elif cmd == b"SUBSCRIBE":
                    c.sendall(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n"
                              b"+switch-master\r\n:1\r\n")
                    for p in self.pushes:
                        time.sleep(self.push_every)
                        c.sendall(b"*3\r\n$7\r\nmessage\r\n$14\r\n"
                                  b"+switch-master\r\n$%d\r\n%s\r\n"
                                  % (len(p), p))
                    self.pushes = []
                elif cmd == b"PING":
                    c.sendall(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
        except OSError:
            return

    def close(self):
        self.stopping = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def resp_addr(host, port):
    host, port = host.encode(), str(port).encode()
    return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(host), host,
                                                   len(port), port)


def test_useless_sentinels_are_skipped(nginx, deployment):
    """Before the real sentinel come one that does not know the master,
    one that answers garbage, one that names a replica (ROLE says slave),
    one that names a port nobody listens on and one that never answers:
    each is logged and skipped, and the worker ends up on the master."""
    d = deployment(replicas=1, sentinels=1)
    replica = d.redis[1]
    dead = imtest_free_port()
    fakes = [FakeSentinel(b"*-1\r\n"),
             FakeSentinel(b"*2\r\n$9\r\nlocalhost\r\n$4\r\n6379\r\n"),
             FakeSentinel(resp_addr("127.0.0.1", replica.port)),
             FakeSentinel(resp_addr("127.0.0.1", dead)),
             FakeSentinel(None)]
    try:
        addrs = ",".join([f.addr for f in fakes] + [d.sentinels[0].addr])
        n = nginx(redis_addr="sentinel:%s/%s" % (addrs, MASTER),
                  start=False)
        n.start(timeout=60)
        n.wait_log(r"redis 127.0.0.1:%d is up" % d.redis[0].port, 60)
        log = n.error_log
        assert 'sentinel %s gave no address for master "%s"' % (
            fakes[0].addr, MASTER) in log
        assert 'sentinel %s gave no address' % fakes[1].addr in log
        assert "sentinel %s: no master address, reconnecting" \
            % fakes[1].addr in log
        assert "redis 127.0.0.1:%d is not the master" % replica.port in log
        assert "Connection refused) while talking to redis 127.0.0.1:%d" \
            % dead in log
        assert "sentinel %s: setup timed out" % fakes[4].addr in log
        run(chat_once(n))
    finally:
        for f in fakes:
            f.close()


def imtest_free_port():
    import imtest
    return imtest.free_port()


def test_a_huge_sentinel_answer_is_cut_off(nginx, deployment):
    """A sentinel that answers with a 1 MiB bulk string (or an endless
    array) is dropped after 64 KiB, not buffered: the next one is asked."""
    d = deployment(replicas=0, sentinels=1)
    big = b"x" * (1 << 20)
    fakes = [FakeSentinel(b"*2\r\n$%d\r\n%s\r\n" % (len(big), big)),
             FakeSentinel(b"*100000000\r\n" + b":1\r\n" * 40000)]
    try:
        addrs = ",".join([f.addr for f in fakes] + [d.sentinels[0].addr])
        n = nginx(redis_addr="sentinel:%s/%s" % (addrs, MASTER),
                  start=False)
        n.start(timeout=30)
        log = n.error_log
        assert log.count("a reply of more than 65536 bytes") >= 2, log
        assert "sentinel %s: oversized reply, reconnecting" \
            % fakes[0].addr in log
        run(chat_once(n))
    finally:
        for f in fakes:
            f.close()


def test_a_storm_of_switches_backs_off(nginx, deployment):
    """The watched sentinel announces 150 switches in 1.5 s, each to an
    address that is not the master: the worker drops its link for the
    first at once, then backs off (about 5 reconnects, not one per
    switch every 100 ms)."""
    d = deployment(replicas=0, sentinels=1)
    switches = [b"%s 127.0.0.1 1 127.0.0.%d 7" % (MASTER.encode(), i % 200 + 2)
                for i in range(150)]
    fake = FakeSentinel(resp_addr("127.0.0.1", d.redis[0].port),
                        pushes=switches)
    try:
        n = nginx(redis_addr="sentinel:%s,%s/%s" % (
            fake.addr, d.sentinels[0].addr, MASTER), start=False)
        n.start(timeout=30)
        n.wait_log("switched from", 10)
        time.sleep(3)
        log = n.error_log
        assert log.count("switched from") == 150, log.count("switched from")
        ups = log.count("redis 127.0.0.1:%d is up" % d.redis[0].port)
        assert 2 <= ups <= 10, ups
        run(chat_once(n))
    finally:
        fake.close()


def test_a_watched_sentinel_that_refuses_is_retried_with_backoff(
        nginx, deployment):
    """A sentinel that refuses the watching socket's SUBSCRIBE is tried
    again 1, 2, 4 s apart (+ jitter), not every second; the link itself
    is up all along."""
    d = deployment(replicas=0, sentinels=1)
    fake = FakeSentinel(resp_addr("127.0.0.1", d.redis[0].port),
                        refuse_subscribe=True)
    try:
        n = nginx(redis_addr="sentinel:%s/%s" % (fake.addr, MASTER))
        time.sleep(8)
        refused = n.error_log.count("refused, watching the next one")
        assert 2 <= refused <= 4, refused
        run(chat_once(n))
    finally:
        fake.close()


def test_an_acl_user_without_wait_is_refused_at_setup(nginx, tmp_path):
    """im_redis_wait with an ACL user that may not WAIT: the link does not
    come up (a clear "refused setup" line), instead of a link that looks
    healthy and answers every send UNAVAILABLE."""
    import imtest
    r = imtest.Redis(tmp_path / "redis-acl", password="root").start()
    try:
        r.cli("ACL", "SETUSER", "nowait", "on", ">pw", "~*", "&*", "+@all",
              "-wait")
        (tmp_path / "pw").write_text("nowait pw\n")
        n = nginx(redis_addr=r.addr, stream_directives=(
            "im_redis_password %s; im_redis_wait 1 100ms;"
            % (tmp_path / "pw")))
        n.wait_log(r"redis refused setup: NOPERM", 10)
        assert "is up" not in n.error_log
    finally:
        r.stop(kill=True)


def test_exit_waits_for_a_wait_in_flight(nginx, redis, tmp_path):
    """The only replica is stopped and a send waits in WAIT (3 s): a worker
    told to exit reads the WAIT's answer and the commands behind it, so
    its alive key is gone after it (SIGTERM), and on a graceful stop its
    session's route too."""
    import imtest
    import signal as sig
    replica = imtest.Redis(tmp_path / "replica",
                           args=["--replicaof", "127.0.0.1", redis.port])
    replica.start()
    try:
        wait_until(lambda: "state=online" in redis.cli(
            "INFO", "replication"), 20, 0.1, "the replica online")
        for how in (sig.SIGTERM, sig.SIGQUIT):
            os.kill(replica.proc.pid, sig.SIGCONT)
            n = nginx(stream_directives="im_redis_wait 1 3s;",
                      server_directives="im_drain_window 1s;")

            async def go():
                alice = await login(n, "alice")
                os.kill(replica.proc.pid, sig.SIGSTOP)
                await alice.post(send={"to": "bob", "body": b"x",
                                       "client_msg_id": "held"})
                await asyncio.sleep(0.3)
                n.proc.send_signal(how)
                await alice.wait_closed(10)

            run(go())
            n.proc.wait(15)
            assert "replies not read at exit" not in n.error_log
            assert not redis_cmd(redis, "KEYS", "im:route:*:alive")
            if how == sig.SIGQUIT:
                assert not redis_cmd(redis, "HGETALL", "im:{u:alice}:routes")
    finally:
        os.kill(replica.proc.pid, sig.SIGCONT)
        replica.stop(kill=True)


def test_planned_failover_with_writes_paused_loses_nothing(nginx,
                                                          deployment):
    """A planned failover as docs/operations.md says to run one: pause the
    primary's writes, SENTINEL FAILOVER, unpause once it is a replica.
    The workers follow the switch; with im_redis_wait 1 every
    acknowledged message is on the new primary and arrives.  (Without
    the pause the old primary takes writes until it is demoted and its
    other replica confirms them: those are lost, whatever im_redis_wait.)"""
    d = deployment(replicas=2, sentinels=3)
    n = nginx(workers=2, redis_addr=d.im_redis,
              stream_directives="im_redis_wait 1 1s;")
    old = d.redis[0]

    async def go():
        loop = asyncio.get_running_loop()
        load = ChatLoad(n, 20, interval=0.1, max_msgs=2000, prefix="pf",
                        deadline=150)
        await load.start()
        await load.wait_acked(300, timeout=60)
        old.cli("CLIENT", "PAUSE", "10000", "WRITE")
        d.sentinels[0].cli("SENTINEL", "FAILOVER", MASTER)
        new = await loop.run_in_executor(None, d.wait_failover, old, 60)
        await loop.run_in_executor(None, lambda: wait_until(
            lambda: d.role(old) == "slave", 60, 0.1,
            "the old primary demoted"))
        try:
            old.cli("CLIENT", "UNPAUSE")
        except subprocess.SubprocessError:
            pass        # the pause ends by itself
        await load.wait_acked(300, timeout=60)
        report = await load.finish("planned failover, writes paused")
        return report, not_on(new, load), vanished_copies(new, load)

    report, missing, vanished = run(go(), timeout=300)
    report.extra.append("acknowledged messages not on the new primary: %d"
                        % len(missing))
    report.print()
    report.dup_after_dedup = [x for x in report.dup_after_dedup
                              if x[1] not in vanished]
    report.ack_conflicts = [a for a in report.ack_conflicts
                            if not (a[1] in vanished and a[2] != "body")]
    report.check()
    assert not missing, missing[:10]
