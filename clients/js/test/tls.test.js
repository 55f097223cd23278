// The SDK over wss:// to nginx's `listen ... ssl`, with a certificate made
// by openssl for this test, through a reload with the TLS sessions open.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ImClient } from "../src/node.js";
import { makeCert, servers, waitFor } from "./harness.js";

let s;
let cert;

before(async () => {
    cert = await makeCert();
    s = await servers({ tls: cert });
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

function client(user, wsOptions) {
    const c = new ImClient({
        url: s.nginx.url, getToken: () => s.nginx.token(user),
        wsOptions, backoffMinMs: 50, backoffMaxMs: 500,
    });
    clients.push(c);
    c.got = [];
    c.goaways = 0;
    c.on("message", (m) => c.got.push(m.msgId));
    c.on("goaway", () => c.goaways++);
    c.on("error", () => {});
    return c;
}

test("wss:// both ways and through a reload", async () => {
    assert.match(s.nginx.url, /^wss:/);
    const a = client("tls-a", { ca: cert.ca });
    const b = client("tls-b", { ca: cert.ca });
    await Promise.all([a.connect(), b.connect()]);

    const acked = [];
    for (let i = 0; i < 10; i++) {
        acked.push((await a.send({ to: "tls-b", body: "x" + i })).msgId);
    }
    await s.nginx.reload();
    await waitFor(() => a.goaways && b.goaways, 5000, "both Goaways");
    for (let i = 10; i < 20; i++) {
        acked.push((await a.send({ to: "tls-b", body: "x" + i })).msgId);
    }
    await waitFor(() => b.got.length >= 20, 10000, "20 messages");
    assert.deepEqual(b.got, acked);
    a.close();
    b.close();
});

test("a certificate the client does not trust: no session, retries",
    async () => {
        const c = client("untrusting", undefined);
        const gone = [];
        c.on("disconnect", (e) => gone.push(e.reason));
        c.connect().catch(() => {});
        await waitFor(() => gone.length >= 2, 5000, "two failed attempts");
        assert.notEqual(c.state, "open");
        c.close();
    });
