// The web chat (examples/web-chat) in Debian's Chromium, driven by
// playwright-core, against the servers of ./build.sh run: its nginx.conf,
// its demo token endpoint, its open group.  Two users chat both ways, see
// typing, receipts and presence, one reloads and gets the history back.
// Screenshots: build/browser/*.png.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

import { Nginx, Redis, build, freePort, top, waitFor } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = join(build, "browser");
const T = 10000;

let redis;
let nginx;
let tokens;
let browser;

before(async () => {
    redis = new Redis();
    await redis.start();
    const tokenPort = await freePort();
    nginx = new Nginx(redis, { runConf: true, tokenPort });
    await nginx.start();
    tokens = spawn("node", [join(top, "examples", "web-chat",
        "demo-token.js"), "--port", String(tokenPort), "--key",
        join(nginx.dir, "im.key"), "--im-token", join(build, "im-token"),
        "--ws", nginx.url], { stdio: "inherit" });
    await waitFor(async () => {
        try {
            return (await fetch(web("/demo/token?user=probe"))).ok;
        } catch {
            return false;
        }
    }, T, "the demo token endpoint");
    await nginx.call("PUT", "groups/lobby", { open: true });
    mkdirSync(SHOTS, { recursive: true });
    browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"],
    });
});

after(async () => {
    await browser?.close();
    tokens?.kill();
    await nginx?.stop();
    await redis?.stop();
});

function web(path) {
    return "http://127.0.0.1:" + nginx.httpPort + path;
}

async function user(name) {
    const context = await browser.newContext({
        viewport: { width: 900, height: 560 },
    });
    const page = await context.newPage();
    page.problems = [];
    page.on("pageerror", (e) => page.problems.push(String(e)));
    page.on("console", (m) => m.type() === "error"
        && page.problems.push(m.text()));
    await page.goto(web("/"));
    await page.fill("#login-name", name);
    await page.click("#login-btn");
    await page.waitForSelector("#app:not([hidden])", { timeout: T });
    return page;
}

const conv = (page, key) => page.locator("#convs li[data-key='" + key + "']");

async function say(page, text) {
    await page.locator("#text").pressSequentially(text, { delay: 5 });
    await page.click("#send");
}

test("two users in two browser contexts chat, see typing, receipts and " +
     "presence; a reload brings the history back", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    assert.equal(await alice.textContent("#me"), "alice");

    // alice starts a chat with bob; bob is online
    await alice.fill("#new-peer", "bob");
    await alice.click("#add-peer");
    await conv(alice, "u:bob").locator(".dot.online").waitFor({ timeout: T });
    await say(alice, "hello bob");
    await alice.locator(".msg.mine", { hasText: "hello bob" })
        .waitFor({ timeout: T });

    // bob sees the new conversation, opens it; alice sees "read"
    await conv(bob, "u:alice").locator(".unread").waitFor({ timeout: T });
    await conv(bob, "u:alice").click();
    await bob.locator(".msg.theirs", { hasText: "hello bob" })
        .waitFor({ timeout: T });
    await alice.locator(".msg.mine .status", { hasText: "read" })
        .waitFor({ timeout: T });

    // bob types: alice sees it; then his answer
    await bob.locator("#text").pressSequentially("hi al", { delay: 20 });
    await alice.locator("#typing", { hasText: "bob is typing" })
        .waitFor({ timeout: T });
    await alice.screenshot({ path: join(SHOTS, "alice-typing.png") });
    await bob.locator("#text").pressSequentially("ice!", { delay: 5 });
    await bob.click("#send");
    await alice.locator(".msg.theirs", { hasText: "hi alice!" })
        .waitFor({ timeout: T });

    // the open group
    await conv(alice, "g:lobby").click();
    await say(alice, "hello lobby");
    await conv(bob, "g:lobby").click();
    await bob.locator(".msg.theirs", { hasText: "hello lobby" })
        .waitFor({ timeout: T });
    await conv(alice, "u:bob").click();
    await alice.locator(".msg.theirs", { hasText: "hi alice!" })
        .waitFor({ timeout: T });
    await alice.screenshot({ path: join(SHOTS, "alice.png") });
    await bob.screenshot({ path: join(SHOTS, "bob.png") });

    // bob reloads: signed in again, the history is back
    await bob.reload();
    await bob.waitForSelector("#app:not([hidden])", { timeout: T });
    await conv(bob, "u:alice").click();
    await bob.locator(".msg.theirs", { hasText: "hello bob" })
        .waitFor({ timeout: T });
    await bob.locator(".msg.mine", { hasText: "hi alice!" })
        .waitFor({ timeout: T });
    await conv(bob, "g:lobby").click();
    await bob.locator(".msg.theirs", { hasText: "hello lobby" })
        .waitFor({ timeout: T });
    await bob.screenshot({ path: join(SHOTS, "bob-after-reload.png") });

    // and the chat goes on after the reload
    await conv(bob, "u:alice").click();
    await say(bob, "back again");
    await alice.locator(".msg.theirs", { hasText: "back again" })
        .waitFor({ timeout: T });

    assert.deepEqual(alice.problems, []);
    assert.deepEqual(bob.problems, []);
});

test("the demo token endpoint refuses a bad name", async () => {
    const r = await fetch(web("/demo/token?user=" +
        encodeURIComponent("no spaces")));
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error, "BAD_FIELD");
});
