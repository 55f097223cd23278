// The web chat's token endpoint, FOR THE DEMO ONLY: it signs a token for
// whatever name it is asked, so anyone who reaches it is anyone.  Only
// ./build.sh run starts it, on loopback, behind nginx's /demo/token; a
// real deployment mints tokens in its own backend after its own login
// (docs/security.md).
//
// node demo-token.js --port P --key FILE.key --im-token BIN --ws URL
// GET /demo/token?user=NAME -> {"token", "url", "expires_at_ms"}

import { execFile } from "node:child_process";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const TTL_S = 3600;
const ID = /^[A-Za-z0-9_.@-]{1,64}$/;

const { values: o } = parseArgs({
    options: {
        port: { type: "string" }, key: { type: "string" },
        "im-token": { type: "string" }, ws: { type: "string" },
    },
});
for (const k of ["port", "key", "im-token", "ws"]) {
    if (!o[k]) {
        console.error("demo-token: --" + k + " is required");
        process.exit(2);
    }
}

function answer(res, status, doc) {
    res.writeHead(status, { "Content-Type": "application/json",
        "Cache-Control": "no-store" });
    res.end(JSON.stringify(doc));
}

createServer((req, res) => {
    let url;
    try {
        url = new URL(req.url, "http://localhost");
    } catch {
        return answer(res, 400, { error: "BAD_FIELD", reason: "bad URL" });
    }
    const user = url.searchParams.get("user") || "";
    if (req.method !== "GET" || url.pathname !== "/demo/token") {
        return answer(res, 404, { error: "NOT_FOUND" });
    }
    if (!ID.test(user)) {
        return answer(res, 400, { error: "BAD_FIELD",
            reason: "user: 1-64 of [A-Za-z0-9_.@-]" });
    }
    execFile(o["im-token"], ["mint", "--key", o.key, "--sub", user,
        "--ttl", TTL_S + "s"], (err, stdout) => {
        if (err) {
            return answer(res, 500, { error: "INTERNAL",
                reason: "im-token failed" });
        }
        answer(res, 200, { token: stdout.trim(), url: o.ws,
            expires_at_ms: Date.now() + TTL_S * 1000 });
    });
}).listen(Number(o.port), "127.0.0.1");
