// A fake server that answers the SDK with what no ngx_im sends: the
// client reports a PROTOCOL error, drops that connection, comes back,
// and never throws into the application.

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocketServer } from "ws";

import { ImClient } from "../src/node.js";
import { decode, encode } from "../src/wire.js";
import { sleep, waitFor } from "./harness.js";

const authOk = (id) => encode({ id, authOk: { user: "u",
    session: "s:1:1:d", pingIntervalMs: 30000,
    expiresAtMs: Date.now() + 3600e3 } });

// each connection gets the next answer after its Auth
const ANSWERS = [
    Buffer.from([0xff, 0xff, 0xff]),            // not protobuf
    "a text message",
    Buffer.from(encode({ id: 1 })),             // a frame without a body
    Buffer.from([0x0a, 0x80]),                  // truncated length
    Buffer.alloc(1 << 20, 0x41),                // a MiB of junk
];

// a fake server on loopback; onConnection(ws, n) for each connection
async function fakeServer(t, onConnection) {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((r) => wss.once("listening", r));
    let n = 0;
    wss.on("connection", (ws) => {
        ws.on("error", () => {});
        onConnection(ws, n++);
    });
    t.after(() => new Promise((r) => {
        for (const ws of wss.clients) {
            ws.terminate();
        }
        wss.close(r);
    }));
    return {
        url: "ws://127.0.0.1:" + wss.address().port + "/",
        get connections() {
            return n;
        },
    };
}

// answers each request with reply(frame) (a frame object or nothing)
function serve(reply) {
    return (ws) => ws.on("message", (data) => {
        const out = reply(decode(data), ws);
        for (const f of [out].flat().filter(Boolean)) {
            ws.send(f instanceof Uint8Array ? f : encode(f));
        }
    });
}

function signedIn(f, expiresAtMs) {
    return { id: f.id, authOk: { user: "u", session: "s:1:1:d",
        pingIntervalMs: 30000, maxFrame: 65536,
        expiresAtMs: expiresAtMs ?? Date.now() + 3600e3 } };
}

test("malformed frames from a server: a clean error, then a retry",
    async (t) => {
        const srv = await fakeServer(t, (ws, i) => ws.on("message",
            (data) => ws.send(i < ANSWERS.length ? ANSWERS[i]
                : authOk(decode(data).id))));
        const c = new ImClient({
            url: srv.url,
            token: "t", backoffMinMs: 10, backoffMaxMs: 50,
        });
        t.after(() => c.close());
        const errors = [];
        c.on("error", (e) => errors.push(e));
        await c.connect();
        assert.equal(srv.connections, ANSWERS.length + 1);
        assert.equal(errors.length, ANSWERS.length);
        assert.ok(errors.every((e) => e.code === "PROTOCOL"), errors);
        assert.equal(c.state, "open");
        assert.equal(c.user, "u");
    });

test("a server that accepts and never answers: connect timeout, retry",
    async (t) => {
        const srv = await fakeServer(t, () => {});
        const c = new ImClient({
            url: srv.url,
            token: "t", connectTimeoutMs: 200, backoffMinMs: 10,
            backoffMaxMs: 20,
        });
        t.after(() => c.close());
        const gone = [];
        c.on("disconnect", (e) => gone.push(e.reason));
        c.connect().catch(() => {});
        await waitFor(() => srv.connections >= 3, 5000, "three attempts");
        assert.ok(gone.includes("connect timeout"), gone);
        c.close();
        assert.equal(c.state, "closed");
    });

// from the attack review: answers of the wrong kind, bad msg_ids, floods
test("replies that do not fit their request are PROTOCOL errors",
    async (t) => {
        const WRONG = [
            (f) => ({ id: f.id, message: { msgId: "1-0", from: "x" } }),
            (f) => ({ id: f.id, presence: { user: "x", online: true } }),
            (f) => ({ id: f.id, syncDone: {} }),
            (f) => ({ id: f.id, ok: {} }),
            (f) => ({ id: f.id, sendAck: { msgId: "1700000000000" } }),
            () => ({ id: 0, message: { msgId: "5", from: "x" } }),
        ];
        let conn = 0;
        const srv = await fakeServer(t, (ws, i) => serve((f) => {
            if (f.body === "auth") {
                conn = i;
                return signedIn(f);
            }
            if (f.body === "send") {
                return i < WRONG.length ? WRONG[i](f)
                    : { id: f.id, sendAck: { msgId: "1-0",
                        clientMsgId: f.send.clientMsgId } };
            }
            return null;
        })(ws));
        const c = new ImClient({ url: srv.url, token: "t",
            backoffMinMs: 5, backoffMaxMs: 10 });
        t.after(() => c.close());
        const errors = [];
        c.on("error", (e) => errors.push(e));
        c.connect();
        const ack = await c.send({ to: "bob", body: "x" });
        assert.equal(ack.msgId, "1-0");
        assert.equal(conn, WRONG.length);
        assert.equal(errors.length, WRONG.length, errors);
        assert.ok(errors.every((e) => e.code === "PROTOCOL"), errors);
    });

test("a Sync answered with more than 1000 messages is dropped", async (t) => {
    const srv = await fakeServer(t, serve((f) => {
        if (f.body === "auth") {
            return signedIn(f);
        }
        if (f.body === "sync") {
            return Array.from({ length: 1001 }, (_, k) =>
                ({ id: f.id, message: { msgId: "1-" + k } }));
        }
        return null;
    }));
    const c = new ImClient({ url: srv.url, token: "t", backoffMinMs: 5000 });
    t.after(() => c.close());
    const errors = [];
    c.on("error", (e) => errors.push(e));
    await c.connect();
    c.sync({}).catch(() => {});
    await waitFor(() => errors.length, 5000, "the PROTOCOL error");
    assert.equal(errors[0].code, "PROTOCOL");
});

test("an expiry in the client's past or far future does not loop " +
     "refreshing", async (t) => {
    for (const exp of [Date.now() - 60e3, Date.now() + 30 * 86400e3]) {
        let asked = 0;
        let auths = 0;
        const srv = await fakeServer(t, serve((f) => {
            auths++;
            return signedIn(f, exp);
        }));
        const c = new ImClient({ url: srv.url, getToken: async () => {
            asked++;
            return "t";
        } });
        await c.connect();
        await sleep(2500);
        c.close();
        assert.ok(asked <= 4 && auths <= 4, [exp, asked, auths]);
    }
});

test("Goaway: a huge delay is not an instant move, a repeated one is " +
     "not a storm", async (t) => {
    for (const delay of [4294967295, 0]) {
        const srv = await fakeServer(t, serve((f) => [signedIn(f),
            { id: 0, goaway: { reconnectAfterMs: delay } }]));
        const c = new ImClient({ url: srv.url, token: "t",
            backoffMinMs: 200, backoffMaxMs: 2000 });
        await c.connect();
        await sleep(1500);
        c.close();
        assert.ok(srv.connections <= (delay ? 1 : 8),
            [delay, srv.connections]);
    }
});

test("a server that drops every session right after AuthOk gets a " +
     "growing backoff", async (t) => {
    const srv = await fakeServer(t, serve((f, ws) => {
        setTimeout(() => ws.terminate(), 5);
        return signedIn(f);
    }));
    const c = new ImClient({ url: srv.url, token: "t", backoffMinMs: 50,
        backoffMaxMs: 30000 });
    c.on("error", () => {});
    await c.connect();
    await sleep(2000);
    c.close();
    // 50 ms doubling from 0: at most about 7 waits fit in 2 s
    assert.ok(srv.connections <= 12, srv.connections);
});

test("one send seen under two msg_ids (a failover's retry) is shown once",
     async (t) => {
    const push = (msgId, cmid) => encode({ id: 0, message: {
        msgId, from: "bob", to: "u", body: Buffer.from("hi"),
        clientMsgId: cmid } });
    const srv = await fakeServer(t, serve((f) => {
        if (f.body === "auth") {
            return [signedIn(f), push("100-1", "c1"), push("200-1", "c1"),
                    push("300-1", "c2"), push("400-1", "")];
        }
        return null;
    }));
    const c = new ImClient({ url: srv.url, token: "t", device: "d" });
    t.after(() => c.close());
    const got = [];
    c.on("message", (m) => got.push(m.msgId));
    await c.connect();
    await waitFor(() => got.length === 3, 5000, "three messages");
    await sleep(100);
    assert.deepEqual(got, ["100-1", "300-1", "400-1"]);
});

test("sends answered UNAVAILABLE again and again are all stored in the " +
     "end, on a busy event loop", async (t) => {
    // the server runs in this process and stalls it a little on each
    // frame: timers then fire before Date.now() says they are due
    const tries = new Map();
    const srv = await fakeServer(t, serve((f) => {
        const until = Date.now() + 3;
        while (Date.now() < until) {
            // busy
        }
        if (f.body === "auth") {
            return signedIn(f);
        }
        if (f.body !== "send") {
            return null;
        }
        const cmid = f.send.clientMsgId;
        const n = (tries.get(cmid) || 0) + 1;
        tries.set(cmid, n);
        if (n <= 4) {
            return { id: f.id, error: { code: 6, reason: "retry" } };
        }
        return { id: f.id, sendAck: { clientMsgId: cmid,
            msgId: "1-" + n, tsMs: 1 } };
    }));
    const c = new ImClient({ url: srv.url, token: "t", device: "d",
        backoffMinMs: 5, backoffMaxMs: 50 });
    t.after(() => c.close());
    c.on("error", () => {});
    await c.connect();
    const acks = await Promise.all(Array.from({ length: 20 }, (_, n) =>
        c.send({ to: "peer", body: "m" + n })));
    assert.equal(acks.length, 20);
    assert.ok([...tries.values()].every((n) => n === 5), [...tries.values()]);
});
