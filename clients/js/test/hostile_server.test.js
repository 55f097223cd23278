// A fake server that answers the SDK with what no ngx_im sends: the
// client reports a PROTOCOL error, drops that connection, comes back,
// and never throws into the application.

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocketServer } from "ws";

import { ImClient } from "../src/node.js";
import { decode, encode } from "../src/wire.js";
import { waitFor } from "./harness.js";

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

test("malformed frames from a server: a clean error, then a retry",
    async () => {
        const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
        await new Promise((r) => wss.once("listening", r));
        let n = 0;
        wss.on("connection", (ws) => {
            const i = n++;
            ws.on("message", (data) => {
                ws.send(i < ANSWERS.length ? ANSWERS[i]
                    : authOk(decode(data).id));
            });
            ws.on("error", () => {});
        });
        const c = new ImClient({
            url: "ws://127.0.0.1:" + wss.address().port + "/",
            token: "t", backoffMinMs: 10, backoffMaxMs: 50,
        });
        const errors = [];
        c.on("error", (e) => errors.push(e));
        await c.connect();
        assert.equal(n, ANSWERS.length + 1);
        assert.equal(errors.length, ANSWERS.length);
        assert.ok(errors.every((e) => e.code === "PROTOCOL"), errors);
        assert.equal(c.state, "open");
        assert.equal(c.user, "u");
        c.close();
        await new Promise((r) => wss.close(r));
    });

test("a server that accepts and never answers: connect timeout, retry",
    async () => {
        const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
        await new Promise((r) => wss.once("listening", r));
        let n = 0;
        wss.on("connection", (ws) => {
            n++;
            ws.on("error", () => {});
        });
        const c = new ImClient({
            url: "ws://127.0.0.1:" + wss.address().port + "/",
            token: "t", connectTimeoutMs: 200, backoffMinMs: 10,
            backoffMaxMs: 20,
        });
        const gone = [];
        c.on("disconnect", (e) => gone.push(e.reason));
        c.connect().catch(() => {});
        await waitFor(() => n >= 3, 5000, "three attempts");
        assert.ok(gone.includes("connect timeout"), gone);
        c.close();
        assert.equal(c.state, "closed");
        await new Promise((r) => wss.close(r));
    });
