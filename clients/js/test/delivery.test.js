// The delivery promise through the SDK: while nginx reloads twice and
// Redis restarts, every acknowledged message arrives once, in order; token
// refresh on the same connection; Goaway.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ImClient, compareMsgId } from "../src/node.js";
import { servers, sleep, waitFor } from "./harness.js";

let s;

before(async () => {
    s = await servers({ workers: 2 });
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

function client(user, options = {}) {
    const c = new ImClient({
        url: s.nginx.url, getToken: () => s.nginx.token(user),
        backoffMinMs: 50, backoffMaxMs: 1000, ...options,
    });
    clients.push(c);
    c.got = [];
    c.events = [];
    c.on("message", (m) => c.got.push(m));
    for (const k of ["goaway", "disconnect", "connect", "refresh"]) {
        c.on(k, (e) => c.events.push([k, e]));
    }
    c.on("error", () => {});
    return c;
}

test("every acked message arrives once, in order, through two reloads " +
     "and a Redis restart", async () => {
    const PAIRS = 4;
    const PER = 60;
    const senders = [];
    const receivers = [];
    for (let i = 0; i < PAIRS; i++) {
        senders.push(client("snd" + i));
        receivers.push(client("rcv" + i));
    }
    await Promise.all([...senders, ...receivers].map((c) => c.connect()));

    const acked = senders.map(() => []);
    const sending = senders.map(async (c, i) => {
        for (let n = 0; n < PER; n++) {
            const ack = await c.send({ to: "rcv" + i, body: "n" + n,
                clientMsgId: "s" + i + "-" + n });
            acked[i].push(ack.msgId);
            await sleep(15);
        }
    });

    // the faults, while the sends go on
    const faults = (async () => {
        await sleep(300);
        await s.nginx.reload();
        await sleep(300);
        await s.redis.stop();
        await sleep(500);
        await s.redis.start();
        await sleep(300);
        await s.nginx.reload();
    })();

    await Promise.all([...sending, faults]);

    for (let i = 0; i < PAIRS; i++) {
        const r = receivers[i];
        await waitFor(() => r.got.length >= PER, 20000,
            "rcv" + i + "'s messages");
        const ids = r.got.map((m) => m.msgId);
        assert.deepEqual(ids, acked[i], "rcv" + i + ": once, in order");
        assert.deepEqual(r.got.map((m) => m.text),
            Array.from({ length: PER }, (_, n) => "n" + n));
        for (let k = 1; k < ids.length; k++) {
            assert.ok(compareMsgId(ids[k - 1], ids[k]) < 0);
        }
    }
    // the reloads came as Goaways, and the clients came back
    for (const c of [...senders, ...receivers]) {
        assert.ok(c.events.some(([k]) => k === "goaway"), c.user);
        await waitFor(() => c.state === "open", 10000, c.user + " back");
        c.close();
    }
});

test("a token is refreshed on the same connection before it expires",
    async () => {
        let asked = 0;
        const c = client("fresh", {
            getToken: () => {
                asked++;
                return s.nginx.token("fresh", "3s");
            },
        });
        await c.connect();
        const session = c.session;
        const first = c.expiresAtMs;
        await waitFor(() => c.events.filter(([k]) => k === "refresh")
            .length >= 2, 15000, "two refreshes");
        assert.ok(c.expiresAtMs > first);
        assert.equal(c.session, session);
        assert.ok(asked >= 3);
        assert.ok(!c.events.some(([k]) => k === "disconnect"), c.events);
        // and the session still works
        await c.send({ to: "fresh", body: "still on" });
        c.close();
    });

test("Goaway: the client goes on reading until the delay, then moves",
    async () => {
        const a = client("goer");
        const b = client("peer");
        await Promise.all([a.connect(), b.connect()]);
        const before = a.session;
        const reloading = s.nginx.reload();
        await waitFor(() => a.events.some(([k]) => k === "goaway"), 5000,
            "goaway");
        const delay = a.events.find(([k]) => k === "goaway")[1]
            .reconnectAfterMs;
        assert.ok(delay >= 0 && delay <= 2000, delay);
        // still on the old worker and still reading
        if (a.state === "open" && a.session === before) {
            await b.send({ to: "goer", body: "during" });
        }
        await reloading;
        await waitFor(() => a.session !== before && a.state === "open",
            10000, "the new session");
        await b.send({ to: "goer", body: "after" });
        await waitFor(() => a.got.some((m) => m.text === "after"), 5000,
            "the message after the move");
        const texts = a.got.map((m) => m.text);
        assert.equal(new Set(texts).size, texts.length, texts);
        a.close();
        b.close();
    });

test("a client the backend disconnects stops; close() is clean", async () => {
    const c = client("kicked");
    await c.connect();
    const errors = [];
    c.on("error", (e) => errors.push(e));
    const r = await s.nginx.call("POST", "users/kicked/disconnect",
        { reason: "go away" });
    assert.equal(r.disconnected, 1, r);
    await waitFor(() => c.state === "closed", 5000, "closed");
    assert.equal(errors[0].code, "FORBIDDEN");
    assert.equal(errors[0].reason, "go away");
});

test("sends made while Redis is down are stored in the order sent",
    async () => {
        const a = client("orderly");
        await a.connect();
        await s.redis.stop();
        const acks = Array.from({ length: 20 }, (_, n) =>
            a.send({ to: "orderly-peer", body: "n" + n }));
        await sleep(700);
        await s.redis.start();
        const ids = (await Promise.all(acks)).map((x) => x.msgId);
        const sorted = [...ids].sort(compareMsgId);
        assert.deepEqual(ids, sorted);
        a.close();
    });
