// The SDK against a real nginx + Redis: messages, receipts, typing,
// presence, groups, history, and what the client refuses itself.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ImClient, ImError } from "../src/node.js";
import { servers, waitFor } from "./harness.js";

let s;

before(async () => {
    s = await servers();
});

// a test that fails leaves its clients open: closed here, or they would
// reconnect to the stopped servers and keep the test process alive
const clients = [];

after(async () => {
    for (const c of clients) {
        c.close();
    }
    await s?.stop();
});

async function client(user, options = {}) {
    const c = new ImClient({
        url: s.nginx.url, getToken: () => s.nginx.token(user), ...options,
    });
    clients.push(c);
    const seen = { message: [], receipt: [], typing: [], presence: [],
        error: [] };
    for (const k of Object.keys(seen)) {
        c.on(k, (e) => seen[k].push(e));
    }
    c.seen = seen;
    await c.connect();
    return c;
}

test("1:1 both ways, once each, with receipts and typing", async () => {
    const alice = await client("alice");
    const bob = await client("bob");
    assert.equal(alice.user, "alice");
    assert.match(alice.session, /:default$/);

    const ack = await alice.send({ to: "bob", body: "hello bob" });
    assert.match(ack.msgId, /^\d+-\d+$/);
    assert.match(ack.clientMsgId, /^[0-9a-f]{24}$/);
    await waitFor(() => bob.seen.message.length === 1, 5000, "bob's message");
    const m = bob.seen.message[0];
    assert.deepEqual([m.msgId, m.from, m.to, m.text, m.group],
        [ack.msgId, "alice", "bob", "hello bob", ""]);

    bob.typing({ to: "alice" });
    await waitFor(() => alice.seen.typing.length === 1, 5000, "typing");
    assert.deepEqual(alice.seen.typing[0],
        { to: "alice", group: "", from: "bob" });

    const r = await bob.markRead(m);
    await waitFor(() => alice.seen.receipt.length === 1, 5000, "receipt");
    assert.deepEqual(alice.seen.receipt[0].upTo, ack.msgId);
    assert.equal(alice.seen.receipt[0].msgId, r.msgId);
    assert.equal(alice.seen.receipt[0].from, "bob");

    await bob.send({ to: "alice", body: new Uint8Array([0, 255]),
        type: "bin" });
    await waitFor(() => alice.seen.message.length === 1, 5000, "reply");
    assert.deepEqual([...alice.seen.message[0].body], [0, 255]);
    assert.equal(alice.seen.message[0].type, "bin");

    // alice's own send is not handed back to her as a message
    assert.ok(alice.seen.message.every((x) => x.from === "bob"));
    alice.close();
    bob.close();
});

test("a second device gets the user's own sends; the same clientMsgId " +
     "is stored once", async () => {
    const a1 = await client("anna", { device: "phone" });
    const a2 = await client("anna", { device: "laptop" });
    const x = await a1.send({ to: "zed", body: "one", clientMsgId: "cm-1" });
    const y = await a1.send({ to: "zed", body: "two", clientMsgId: "cm-1" });
    assert.equal(x.msgId, y.msgId);
    await waitFor(() => a2.seen.message.length === 1, 5000, "a2's copy");
    assert.equal(a2.seen.message[0].from, "anna");
    assert.equal(a2.seen.message[0].text, "one");
    a1.close();
    a2.close();
});

test("presence: the answer, then online and offline pushes", async () => {
    const watcher = await client("watcher");
    const now = await watcher.presence.subscribe(["pat", "pat"]);
    assert.deepEqual(now.map((p) => [p.user, p.online]), [["pat", false]]);
    const pat = await client("pat");
    await waitFor(() => watcher.seen.presence.some((p) => p.online), 5000,
        "pat online");
    pat.close();
    await waitFor(() => watcher.seen.presence.some((p) => !p.online
        && p.lastSeenMs > 0), 5000, "pat offline");
    watcher.close();
});

test("groups: join an open group, send, leave; errors reject", async () => {
    await s.redis.cli("HSET", "im:{g:room}:meta", "open", "1");
    const u1 = await client("gina");
    const u2 = await client("gus");
    await u1.groups.join("room");
    await u2.groups.join("room");
    const ack = await u1.send({ group: "room", body: "hi all" });
    await waitFor(() => u2.seen.message.length === 1, 5000, "group message");
    assert.equal(u2.seen.message[0].group, "room");
    assert.equal(u2.seen.message[0].msgId, ack.msgId);
    await u2.groups.leave("room");

    await assert.rejects(u2.groups.leave("room"),
        (e) => e instanceof ImError && e.code === "NOT_FOUND");
    await assert.rejects(u2.groups.join("nosuchroom"),
        (e) => e.code === "NOT_FOUND");
    await assert.rejects(u2.send({ group: "room", body: "x" }),
        (e) => e.code === "FORBIDDEN");
    // the client is still fine after refused requests
    await u2.send({ to: "gina", body: "still here" });
    u1.close();
    u2.close();
});

test("history pages back through the inbox, newest first", async () => {
    const h = await client("hist");
    const ids = [];
    for (let i = 0; i < 25; i++) {
        ids.push((await h.send({ to: "other", body: "m" + i })).msgId);
    }
    const seen = [];
    let page = await h.history(undefined, 10);
    for (;;) {
        seen.push(...page.messages.map((m) => m.msgId));
        if (!page.more) {
            break;
        }
        page = await h.history(page.last, 10);
    }
    assert.deepEqual(seen, [...ids].reverse());

    // Sync pages by cursor, the place in this inbox
    const all = await h.sync({ limit: 100 });
    assert.deepEqual(all.messages.map((m) => m.msgId), ids);
    assert.equal(all.last, all.messages[24].cursor);
    const fwd = await h.sync({ after: all.messages[19].cursor, limit: 100 });
    assert.deepEqual(fwd.messages.map((m) => m.text),
        ["m20", "m21", "m22", "m23", "m24"]);
    assert.equal(fwd.more, false);
    h.close();
});

test("what the client refuses before it reaches the server", async () => {
    assert.throws(() => new ImClient({ url: s.nginx.url }), TypeError);
    assert.throws(() => new ImClient({ url: s.nginx.url, token: "t",
        device: "bad device" }), TypeError);
    const c = await client("checks", { maxQueue: 2 });
    await assert.rejects(c.send({ to: "a", group: "b" }), TypeError);
    await assert.rejects(c.send({ to: "no spaces" }), TypeError);
    await assert.rejects(c.sync({ after: "x" }), TypeError);
    assert.throws(() => c.typing({}), TypeError);

    // the queue is bounded: the third waiting request is refused
    const a = c.send({ to: "q", body: "1" });
    const b = c.send({ to: "q", body: "2" });
    await assert.rejects(c.send({ to: "q", body: "3" }),
        (e) => e.code === "QUEUE_FULL");
    await Promise.all([a, b]);

    // from the attack review: a send over max_frame is refused here and
    // does not hold up the next; an ArrayBuffer body is sent whole
    await assert.rejects(c.send({ to: "q", body: "x".repeat(70000) }),
        (e) => e.code === "TOO_LARGE");
    await c.send({ to: "q", body: new Uint8Array([1, 2, 3]).buffer });
    const last = await c.history(undefined, 1);
    assert.deepEqual([...last.messages[0].body], [1, 2, 3]);
    await assert.rejects(c.send({ to: "q", body: 5 }), TypeError);
    await assert.rejects(c.presence.subscribe("alice"), TypeError);

    // a server error for a request rejects that request only
    await assert.rejects(c.send({ to: "q", type: "x".repeat(65) }),
        (e) => e.code === "TOO_LARGE");
    c.close();
    await assert.rejects(c.send({ to: "q" }), (e) => e.code === "CLOSED");
    assert.equal(c.state, "closed");
});

test("a refused token without getToken rejects connect and stops",
    async () => {
        const c = new ImClient({ url: s.nginx.url, token: "v4.public.bad" });
        const errors = [];
        c.on("error", (e) => errors.push(e));
        await assert.rejects(c.connect(),
            (e) => e.code === "UNAUTHENTICATED");
        assert.equal(c.state, "closed");
        assert.equal(errors[0].code, "UNAUTHENTICATED");
    });
