"""Several nginx nodes on one Redis: three nginx instances (their own
prefixes, ports and workers, one token key) share a redis-server; users
on different nodes chat 1:1 and in groups, see each other's presence and
typing, and a reload of one node under traffic loses nothing.  Waits are
bounded; nothing asserts that something was fast."""

import asyncio
import shutil

from imchat import close_all, login, xrange
from imgroup import make_group, presence_sub, presences, send_group_ok, typings
from imload import ChatLoad
from imtest import run

NODES = 3


def nodes(nginx, count=NODES, workers=2):
    """count nginx instances on the test's Redis that accept one key."""
    first = nginx(workers=workers)
    out = [first]
    for _ in range(count - 1):
        n = nginx(workers=workers, start=False)
        shutil.copy(first.dir + "/im.pub", n.dir + "/im.pub")
        n.token_seed, n.token_pub = first.token_seed, first.token_pub
        out.append(n.start())
    return out


def test_users_on_different_nodes_chat_see_presence_and_typing(nginx,
                                                               redis):
    ns = nodes(nginx)

    async def go():
        alice = await login(ns[0], "alice")
        bob = await login(ns[1], "bob")
        carol = await login(ns[2], "carol")
        chats = [alice, bob, carol]

        # presence of a user on another node, both ways
        _, st = await presence_sub(alice, ["bob", "carol", "dave"])
        assert st["bob"].online and st["carol"].online
        assert not st["dave"].online
        dave = await login(ns[2], "dave")
        await alice.until(lambda: [p.online for p in
                                   presences(alice, 0, "dave")] == [True],
                          10, "dave online, seen from another node")
        await dave.close()
        await alice.until(lambda: [p.online for p in
                                   presences(alice, 0, "dave")]
                          == [True, False], 10, "dave offline")

        # 1:1 across nodes, each way
        ack = await alice.send_ok("bob", b"a->b", cmid="1")
        await bob.until(lambda: [m.msg_id for m in bob.live_messages()]
                        == [ack.msg_id], 10, "a->b live on node 2")
        ack2 = await carol.send_ok("alice", b"c->a", cmid="2")
        await alice.until(lambda: [m.msg_id for m in alice.live_messages()]
                          == [ack2.msg_id], 10, "c->a live on node 1")

        # typing across nodes
        await bob.post(typing={"to": "alice"})
        await alice.until(lambda: [getattr(t, "from") for t in
                                   typings(alice)] == ["bob"], 10,
                          "bob typing, on node 1")

        # a group with a member on every node
        make_group(redis, "team", "alice", "bob", "carol")
        g = await send_group_ok(bob, "team", b"to all", cmid="g1")
        for c in (alice, carol):
            await c.until(lambda c=c: g.msg_id in [m.msg_id for m in
                                                   c.live_messages()],
                          10, "the group message on every node")
        # (bob typed less than a second ago: carol types in the group)
        await carol.post(typing={"group": "team"})
        for c in (alice, bob):
            await c.until(lambda c=c: any(t.group == "team"
                                          for t in typings(c)),
                          10, "group typing on every node")
        assert not [t for t in typings(carol) if t.group == "team"]
        await close_all(chats)

    run(go(), timeout=60)


def test_a_node_reloads_under_traffic_and_nothing_is_lost(nginx, redis):
    """20 pairs, each pair split over two nodes (a on node 1, b on node
    2, nodes joined through Redis only); node 2 is reloaded twice while
    they chat: every acknowledged message arrives once after dedup, in
    inbox order, and is stored."""
    ns = nodes(nginx, count=2)

    async def go():
        load = ChatLoad(ns[0], 20, interval=0.2, max_msgs=400, prefix="mn",
                        deadline=120)
        for c in load.clients:
            if c.user.startswith("mnb"):
                c.url = ns[1].url
        await load.start()
        await load.wait_acked(200)
        for _ in range(2):
            pids = await asyncio.get_running_loop().run_in_executor(
                None, ns[1].reload)
            # every client of node 2 moves to its new workers, by Goaway
            await load.until(lambda: sum(
                load.sessions_by_pid().get(p, 0) for p in pids) == 20,
                60, "node 2's clients on its new workers")
            await load.wait_acked(200)
        report = await load.finish("two nodes, one reloaded twice")
        report.print()
        report.check()
        for c in load.clients:
            stored = {i for i, _ in xrange(redis, c.peer)}
            assert set(c.acked().values()) <= stored
        by_node = {n.url: 0 for n in ns}
        for c in load.clients:
            by_node[c.url] += 1
        assert sorted(by_node.values()) == [20, 20], by_node
        assert sum(report.reconnects) >= 40, report.text()

    run(go(), timeout=180)
