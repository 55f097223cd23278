// ImClient: one signed-in user on one device, over one WebSocket at a time.
//
// What it keeps across connections: the outbox (sends not yet stored), the
// requests not yet answered, the users it watches, and the cursor of the
// last inbox message it delivered, which is how it drops what a replay
// repeats.
// Everything it holds is bounded (maxQueue, OWN_IDS).
//
// Each connection is an object of its own; a callback of a socket, a timer
// or a reply that is not of the current connection does nothing.

import { Emitter } from "./emitter.js";
import { compareMsgId, isMsgId } from "./msgid.js";
import { codeNames, decode, encode } from "./wire.js";

const SUBPROTOCOL = "im.v1";

// msg_ids of this client's own stored sends, not yet passed by the inbox
const OWN_IDS = 1024;
const SEEN_SENDS = 1024;

// a PresenceSub carries at most this many users
const PRESENCE_CHUNK = 100;

// a Sync page holds at most this many messages (docs/protocol.md)
const SYNC_MAX = 1000;

// the longest delay setTimeout takes; longer ones fire at once
const TIMER_MAX = 0x7fffffff;

// a connection counts as good (the backoff starts over) after this long
const STABLE_MS = 10000;

// the shortest wait before a token refresh, whatever the clocks say
const REFRESH_MIN_MS = 1000;

// what each request kind may be answered with
const REPLIES = {
    send: ["sendAck"], sync: ["message", "syncDone"],
    presence: ["presence"], group: ["ok"],
};

const TEXT = new TextEncoder();
const UTF8 = new TextDecoder();

const ID_FORM = /^[A-Za-z0-9_.@-]{1,64}$/;

/** A failure the client reports: code is an Error.Code name or CLOSED,
 *  QUEUE_FULL, PROTOCOL. */
export class ImError extends Error {
    constructor(code, reason) {
        super(code + (reason ? ": " + reason : ""));
        this.name = "ImError";
        this.code = code;
        this.reason = reason || "";
    }
}

export class ImClient extends Emitter {
    #o;
    #WebSocket;
    #state = "idle";
    #conn = null;           // the current connection
    #connGen = 0;
    #nextId = 1;
    #attempt = 0;           // connections since the last stable one
    #retryTimer = null;
    #token = "";            // the token of the current Auth

    #queue = [];            // requests not answered, oldest first
    #watched = new Set();   // users of presence.subscribe()

    #lastDelivered = "";    // the cursor of the last inbox message passed on
    #ownIds = new Set();    // msg_ids of our stored sends not seen since
    #seenSends = new Set(); // "from\ncmid" of the last messages emitted

    #connectWaiters = [];

    user = "";
    session = "";
    expiresAtMs = 0;

    /**
     * options: url; token or getToken (async, called before each sign-in
     * and before expiresAtMs); device; WebSocket (the constructor; the
     * global one by default); wsOptions (3rd argument of the Node ws
     * constructor, e.g. {ca}); maxQueue (1000); sendWindow (32);
     * ackDelayMs (100); backoffMinMs (250); backoffMaxMs (30000);
     * connectTimeoutMs (10000); refreshMarginMs (60000).
     */
    constructor(options) {
        super();
        const o = {
            device: "", maxQueue: 1000, sendWindow: 32, ackDelayMs: 100,
            backoffMinMs: 250, backoffMaxMs: 30000, connectTimeoutMs: 10000,
            refreshMarginMs: 60000, ...options,
        };
        if (!o.url) {
            throw new TypeError("url is required");
        }
        if (!o.token && !o.getToken) {
            throw new TypeError("token or getToken is required");
        }
        if (o.device && !ID_FORM.test(o.device)) {
            throw new TypeError("bad device id");
        }
        this.#WebSocket = o.WebSocket || globalThis.WebSocket;
        if (!this.#WebSocket) {
            throw new TypeError("no WebSocket: pass options.WebSocket");
        }
        this.#o = o;
        this.presence = {
            subscribe: (users) => this.#presenceSubscribe(users),
        };
        this.groups = {
            join: (group) => this.#groupRequest("groupJoin", group),
            leave: (group) => this.#groupRequest("groupLeave", group),
        };
    }

    /** "idle", "connecting", "open", "waiting" (to reconnect), "closed". */
    get state() {
        return this.#state;
    }

    /** Sends and requests waiting for an answer. */
    get pending() {
        return this.#queue.length;
    }

    #maxFrame = 0;          // AuthOk.max_frame, 0 until known

    /**
     * Starts connecting (and reconnecting, until close()); resolves at the
     * first AuthOk, rejects if the client is closed first or the token is
     * refused and there is no getToken to ask for another.
     */
    connect() {
        if (this.#state === "closed") {
            return Promise.reject(new ImError("CLOSED"));
        }
        if (this.#state === "open") {
            return Promise.resolve();
        }
        const p = new Promise((resolve, reject) => {
            this.#connectWaiters.push({ resolve, reject });
        });
        if (this.#state === "idle") {
            this.#open();
        }
        return p;
    }

    /**
     * Sends a message: {to | group, body (string or Uint8Array), type,
     * clientMsgId}.  Resolves with the SendAck {clientMsgId, msgId, tsMs}
     * once Redis has stored it; retried with the same clientMsgId across
     * errors and reconnects until then.
     */
    send(msg) {
        const m = msg || {};
        if (!m.to === !m.group) {
            return Promise.reject(new TypeError("need one of to and group"));
        }
        const target = m.to || m.group;
        if (!ID_FORM.test(target)) {
            return Promise.reject(new TypeError("bad to or group"));
        }
        const cmid = m.clientMsgId || randomId();
        if (!ID_FORM.test(cmid)) {
            return Promise.reject(new TypeError("bad clientMsgId"));
        }
        const body = bodyBytes(m.body);
        if (!body) {
            return Promise.reject(new TypeError(
                "body: a string, Uint8Array or ArrayBuffer"));
        }
        return this.#enqueue({
            kind: "send",
            frame: {
                send: {
                    to: m.to || "", group: m.group || "", body,
                    clientMsgId: cmid, type: m.type || "",
                },
            },
        });
    }

    /** Sends a read receipt for message m (an event of "message"). */
    markRead(m) {
        const peer = m.group ? { group: m.group }
            : { to: m.from === this.user ? m.to : m.from };
        return this.send({ ...peer, type: "read", body: m.msgId });
    }

    /**
     * A page of the inbox: {after, before, limit} as in Sync.  Resolves
     * with {messages, last, more}; does not move the cursor or touch the
     * "message" events.  Pages are asked one at a time.
     */
    sync(range) {
        const r = range || {};
        for (const k of ["after", "before"]) {
            if (r[k] && !isMsgId(r[k])) {
                return Promise.reject(new TypeError("bad " + k));
            }
        }
        return this.#enqueue({
            kind: "sync",
            frame: {
                sync: {
                    after: r.after || "", before: r.before || "",
                    limit: r.limit || 0,
                },
            },
            messages: [],
        });
    }

    /** Scroll-back: up to limit messages before `before` (or the newest),
     *  newest first. */
    history(before, limit) {
        return this.sync({ before: before || "18446744073709551615-"
            + "18446744073709551615", limit: limit || 50 });
    }

    /** Tells {to | group} that this user is typing; dropped when not
     *  connected (typing is ephemeral). */
    typing(target) {
        const t = target || {};
        if (!t.to === !t.group || !ID_FORM.test(t.to || t.group)) {
            throw new TypeError("need one valid to or group");
        }
        this.#write(this.#conn, {
            id: 0, typing: { to: t.to || "", group: t.group || "" },
        });
    }

    /** Closes the connection and stops; every pending request rejects. */
    close() {
        if (this.#state === "closed") {
            return;
        }
        const c = this.#conn;
        this.#setState("closed");
        clearTimeout(this.#retryTimer);
        this.#conn = null;
        if (c) {
            this.#endConn(c, 1000, "client closing");
        }
        const err = new ImError("CLOSED");
        for (const q of this.#queue.splice(0)) {
            q.reject(err);
        }
        for (const w of this.#connectWaiters.splice(0)) {
            w.reject(err);
        }
    }

    // ---------------------------------------------------------------
    // connections

    async #open() {
        this.#setState("connecting");
        const gen = ++this.#connGen;
        let token = this.#o.token;
        if (this.#o.getToken) {
            // a fresh token for every connection: the last may have
            // expired or been revoked meanwhile
            try {
                token = await this.#o.getToken();
            } catch (e) {
                if (gen === this.#connGen && this.#state === "connecting") {
                    this.emit("error", new ImError("UNAUTHENTICATED",
                        "getToken failed: " + (e && e.message)));
                    this.#retry();
                }
                return;
            }
        }
        if (gen !== this.#connGen || this.#state !== "connecting") {
            return;
        }
        this.#token = token;

        let ws;
        try {
            ws = this.#o.wsOptions
                ? new this.#WebSocket(this.#o.url, SUBPROTOCOL,
                    this.#o.wsOptions)
                : new this.#WebSocket(this.#o.url, SUBPROTOCOL);
        } catch (e) {
            this.emit("error", new ImError("PROTOCOL", e && e.message));
            this.#retry();
            return;
        }
        ws.binaryType = "arraybuffer";

        const c = {
            ws, authed: false, authId: 0, authTries: 0, lastRx: Date.now(),
            ackedUpTo: "", ackTimer: null, timers: new Set(),
            flushTimer: null, flushTimerAt: 0,
            pingInterval: 30000, goaway: false, fatal: null,
            refreshTimer: null, authedAt: 0,
        };
        this.#conn = c;

        this.#later(c, () => {
            if (!c.authed) {
                this.#lost(c, "connect timeout");
            }
        }, this.#o.connectTimeoutMs);

        ws.onopen = () => {
            if (c === this.#conn) {
                this.#auth(c);
            }
        };
        ws.onmessage = (ev) => {
            if (c === this.#conn) {
                this.#receive(c, ev.data);
            }
        };
        ws.onerror = () => {};
        ws.onclose = (ev) => {
            if (c === this.#conn) {
                this.#lost(c, "closed " + ev.code
                    + (ev.reason ? " " + ev.reason : ""));
            }
        };
    }

    #auth(c) {
        c.authId = this.#id();
        this.#write(c, {
            id: c.authId, auth: { token: this.#token, device: this.#o.device },
        });
    }

    // the current connection is gone: clean it up, reconnect
    #lost(c, why) {
        if (c !== this.#conn) {
            return;
        }
        this.#conn = null;
        this.#endConn(c, 1000, "");
        if (c.authedAt && Date.now() - c.authedAt >= STABLE_MS) {
            this.#attempt = 0;
        }
        for (const q of this.#queue) {
            q.sentOn = null;
        }
        this.emit("disconnect", { reason: why });
        if (this.#state === "closed") {
            return;
        }
        if (c.fatal) {
            const waiters = this.#connectWaiters.splice(0);
            this.close();
            for (const w of waiters) {
                w.reject(c.fatal);
            }
            return;
        }
        if (c.goaway && this.#attempt === 0) {
            // the server asked for it: no backoff, only a little jitter;
            // counted, so that a server that says so at once every time
            // gets the backoff from the next time on
            this.#attempt++;
            this.#setState("waiting");
            this.#retryTimer = setTimeout(() => this.#open(),
                Math.random() * 100);
            return;
        }
        this.#retry();
    }

    #endConn(c, code, reason) {
        for (const t of c.timers) {
            clearTimeout(t);
        }
        c.timers.clear();
        clearTimeout(c.ackTimer);
        clearTimeout(c.refreshTimer);
        c.ws.onopen = c.ws.onmessage = c.ws.onclose = null;
        c.ws.onerror = () => {};
        try {
            c.ws.close(code, reason);
        } catch {
            // not open yet in some implementations; nothing to close
        }
    }

    // full jitter: a random wait below min(max, min * 2^attempt)
    #retry() {
        this.#setState("waiting");
        const cap = Math.min(this.#o.backoffMaxMs,
            this.#o.backoffMinMs * 2 ** Math.min(this.#attempt, 20));
        this.#attempt++;
        this.#retryTimer = setTimeout(() => this.#open(),
            Math.random() * cap);
    }

    // a timer of connection c, cleared with it
    #later(c, fn, ms) {
        const t = setTimeout(() => {
            c.timers.delete(t);
            if (c === this.#conn) {
                fn();
            }
        }, Math.min(Math.max(0, ms), TIMER_MAX));
        c.timers.add(t);
        return t;
    }

    #setState(s) {
        if (this.#state !== s) {
            this.#state = s;
            this.emit("state", s);
        }
    }

    #id() {
        const id = this.#nextId;
        this.#nextId = id >= 0xffffffff ? 1 : id + 1;
        return id;
    }

    #write(c, frame) {
        if (!c || c !== this.#conn || c.ws.readyState !== 1) {
            return false;
        }
        c.ws.send(encode(frame));
        return true;
    }

    // ---------------------------------------------------------------
    // what the server sends

    #receive(c, data) {
        let f;
        c.lastRx = Date.now();
        try {
            if (typeof data === "string") {
                throw new Error("a text message");
            }
            f = decode(new Uint8Array(data));
        } catch (e) {
            this.emit("error", new ImError("PROTOCOL",
                "bad frame from the server: " + e.message));
            this.#lost(c, "bad frame from the server");
            return;
        }

        try {
            this.#dispatch(c, f);
        } catch (e) {
            this.emit("error", new ImError("PROTOCOL",
                "bad frame from the server: " + e.message));
            this.#lost(c, "bad frame from the server");
        }
    }

    #dispatch(c, f) {
        switch (f.body) {
        case "authOk":
            this.#authOk(c, f);
            return;
        case "message":
            checkId(f.message.msgId);
            if (f.message.cursor) {
                checkId(f.message.cursor);
            }
            if (f.id === 0) {
                this.#pushed(c, f.message);
            } else {
                this.#answer(f, (q) => {
                    if (q.messages.length >= SYNC_MAX) {
                        throw new Error("a Sync page over " + SYNC_MAX);
                    }
                    q.messages.push(message(f.message));
                    return false;
                });
            }
            return;
        case "syncDone":
            if (f.syncDone.last) {
                checkId(f.syncDone.last);
            }
            this.#answer(f, (q) => {
                q.resolve({
                    messages: q.messages, last: f.syncDone.last,
                    more: f.syncDone.more,
                });
                return true;
            });
            return;
        case "sendAck":
            checkId(f.sendAck.msgId);
            this.#answer(f, (q) => {
                this.#stored(f.sendAck.msgId);
                q.resolve({
                    clientMsgId: f.sendAck.clientMsgId,
                    msgId: f.sendAck.msgId, tsMs: f.sendAck.tsMs,
                });
                return true;
            });
            return;
        case "presence":
            this.#presence(f);
            return;
        case "typing":
            this.emit("typing", { ...f.typing });
            return;
        case "ok":
            this.#answer(f, (q) => {
                q.resolve();
                return true;
            });
            return;
        case "error":
            this.#error(c, f);
            return;
        case "goaway":
            this.#goaway(c, f.goaway.reconnectAfterMs);
            return;
        case "pong":
            return;
        default:
            // a client-to-server body: not for us, harmless
            return;
        }
    }

    #authOk(c, f) {
        const a = f.authOk;
        if (f.id !== c.authId) {
            return;
        }
        this.user = a.user;
        this.session = a.session;
        this.expiresAtMs = a.expiresAtMs;
        this.#maxFrame = a.maxFrame;
        c.pingInterval = a.pingIntervalMs || 30000;
        this.#scheduleRefresh(c);

        if (c.authed) {
            this.emit("refresh", { expiresAtMs: a.expiresAtMs });
            return;
        }
        c.authed = true;
        c.authedAt = Date.now();
        this.#setState("open");
        this.#heartbeat(c);
        this.emit("connect", { user: a.user, session: a.session });
        for (const w of this.#connectWaiters.splice(0)) {
            w.resolve();
        }
        this.#resubscribe();
        this.#flush();
    }

    // a new token before this one expires: Auth again on the same socket.
    // One timer per connection, never sooner than REFRESH_MIN_MS: the
    // server's clock and ours may disagree by more than the token lives.
    #scheduleRefresh(c) {
        if (!this.#o.getToken || !this.expiresAtMs) {
            return;
        }
        clearTimeout(c.refreshTimer);
        const left = this.expiresAtMs - Date.now();
        const margin = Math.min(this.#o.refreshMarginMs, left / 5);
        const fire = async () => {
            let token;
            try {
                token = await this.#o.getToken();
            } catch (e) {
                if (c === this.#conn) {
                    this.emit("error", new ImError("UNAUTHENTICATED",
                        "getToken failed: " + (e && e.message)));
                    c.refreshTimer = this.#later(c, fire, REFRESH_MIN_MS);
                }
                return;
            }
            if (c === this.#conn) {
                this.#token = token;
                this.#auth(c);
            }
        };
        c.refreshTimer = this.#later(c, fire,
            Math.max(REFRESH_MIN_MS, left - margin));
    }

    // a Ping when the server has been quiet; a new connection when it
    // has been quiet for much longer than it promised to ping
    #heartbeat(c) {
        const every = Math.max(1000, c.pingInterval / 3);
        const tick = () => {
            const idle = Date.now() - c.lastRx;
            if (idle > 2 * c.pingInterval + 5000) {
                this.#lost(c, "server silent");
                return;
            }
            if (idle > c.pingInterval) {
                this.#write(c, { id: this.#id(), ping: { tsMs: Date.now() } });
            }
            this.#later(c, tick, every);
        };
        this.#later(c, tick, every);
    }

    #goaway(c, after) {
        if (c.goaway) {
            return;
        }
        c.goaway = true;
        this.emit("goaway", { reconnectAfterMs: after });
        // keep reading until then; the server closes at about that time
        this.#later(c, () => this.#lost(c, "goaway"), after);
    }

    #error(c, f) {
        const code = typeof f.error.code === "string" ? f.error.code
            : codeNames[f.error.code] || "UNSPECIFIED";
        const err = new ImError(code, f.error.reason);

        if (f.id !== 0 && f.id === c.authId) {
            this.#authError(c, err);
            return;
        }
        if (f.id === 0) {
            // the end of the session, which the server closes next: a
            // backend's disconnect stops the client, an expired or
            // revoked token too unless getToken may give another
            if (code === "FORBIDDEN"
                || (code === "UNAUTHENTICATED" && !this.#o.getToken))
            {
                c.fatal = err;
            }
            this.emit("error", err);
            return;
        }
        this.#answer(f, (q) => {
            if (code === "UNAVAILABLE" || code === "RATE_LIMITED") {
                // stored nothing (or a dedup makes it safe): again later
                q.sentOn = null;
                q.retryAt = Date.now() + this.#o.backoffMinMs
                    * (1 + Math.random()) * (code === "RATE_LIMITED" ? 4 : 1);
                this.#flushAt(c, q.retryAt);
                return false;
            }
            q.reject(err);
            return true;
        });
    }

    #authError(c, err) {
        if (err.code === "UNAVAILABLE" && c.authTries++ < 5) {
            this.#later(c, () => this.#auth(c), 300);
            return;
        }
        this.emit("error", err);
        if (c.authed) {
            // a refresh refused: the session goes on to its old exp
            return;
        }
        if (err.code === "UNAUTHENTICATED") {
            if (!this.#o.getToken) {
                const waiters = this.#connectWaiters.splice(0);
                this.close();
                for (const w of waiters) {
                    w.reject(err);
                }
                return;
            }
        }
        this.#lost(c, err.message);
    }

    // A live or replayed message: once, in inbox order (by cursor; an old
    // server's messages have none: their msg_id is it), then an Ack.
    #pushed(c, m) {
        const cursor = m.cursor || m.msgId;
        if (compareMsgId(cursor, this.#lastDelivered) > 0) {
            this.#lastDelivered = cursor;
            if (this.#ownIds.delete(m.msgId)) {
                // our own send, already resolved
            } else if (m.type === "read") {
                this.emit("receipt", {
                    msgId: m.msgId, cursor, from: m.from, to: m.to,
                    group: m.group, upTo: UTF8.decode(m.body), tsMs: m.tsMs,
                });
            } else if (this.#firstCopy(m)) {
                this.emit("message", message(m));
            }
        }
        if (c.ackTimer === null || c.ackTimer === undefined) {
            c.ackTimer = setTimeout(() => {
                c.ackTimer = null;
                if (compareMsgId(this.#lastDelivered, c.ackedUpTo) > 0
                    && this.#write(c, {
                        id: 0, ack: { upTo: this.#lastDelivered },
                    }))
                {
                    c.ackedUpTo = this.#lastDelivered;
                }
            }, this.#o.ackDelayMs);
        }
    }

    // A send stored on a primary that died before a replica had it can
    // be seen live and then stored again by its sender's retry, under a
    // new msg_id but the same client_msg_id: it is shown once.
    #firstCopy(m) {
        if (!m.clientMsgId) {
            return true;
        }
        const key = m.from + "\n" + m.clientMsgId;
        if (this.#seenSends.has(key)) {
            return false;
        }
        if (this.#seenSends.size >= SEEN_SENDS) {
            this.#seenSends.delete(this.#seenSends.values().next().value);
        }
        this.#seenSends.add(key);
        return true;
    }

    #stored(msgId) {
        if (this.#ownIds.size >= OWN_IDS) {
            this.#ownIds.delete(this.#ownIds.values().next().value);
        }
        this.#ownIds.add(msgId);
    }

    #presence(f) {
        const p = {
            user: f.presence.user, online: f.presence.online,
            lastSeenMs: f.presence.lastSeenMs,
        };
        if (f.id !== 0) {
            this.#answer(f, (q) => {
                q.items.push(p);
                if (q.items.length < q.users.length) {
                    return false;
                }
                q.resolve(q.items);
                return true;
            });
        }
        this.emit("presence", p);
    }

    // ---------------------------------------------------------------
    // requests

    #enqueue(q) {
        if (this.#state === "closed") {
            return Promise.reject(new ImError("CLOSED"));
        }
        if (this.#queue.length >= this.#o.maxQueue) {
            return Promise.reject(new ImError("QUEUE_FULL",
                this.#o.maxQueue + " requests waiting"));
        }
        return new Promise((resolve, reject) => {
            q.resolve = resolve;
            q.reject = reject;
            q.sentOn = null;
            q.id = 0;
            q.retryAt = 0;
            this.#queue.push(q);
            this.#flush();
        });
    }

    // writes what is due, in order: sends within the window, one Sync
    #flush() {
        const c = this.#conn;
        if (!c || !c.authed) {
            return;
        }
        const now = Date.now();
        let sends = 0;
        let syncs = 0;
        for (const q of this.#queue) {
            if (q.kind === "send" && q.sentOn === c) {
                sends++;
            }
            if (q.kind === "sync" && q.sentOn === c) {
                syncs++;
            }
        }
        // a send waiting to be retried holds back the ones behind it,
        // so that they are stored in the order sent
        let sendsHeld = false;
        const tooLarge = [];
        for (const q of this.#queue) {
            if (q.sentOn === c) {
                continue;
            }
            if (q.retryAt > now) {
                sendsHeld ||= q.kind === "send";
                // a timer may fire a little before Date.now() says it is
                // due: come back, or the queue stops here
                this.#flushAt(c, q.retryAt);
                continue;
            }
            if (q.kind === "send") {
                if (sends >= this.#o.sendWindow || sendsHeld) {
                    continue;
                }
                q.size ||= encode({ id: 0xffffffff, ...q.frame }).length;
                if (this.#maxFrame && q.size > this.#maxFrame) {
                    tooLarge.push(q);
                    continue;
                }
                sends++;
            } else if (q.kind === "sync") {
                if (syncs) {
                    continue;
                }
                syncs++;
                q.messages = [];
            } else if (q.kind === "presence") {
                q.items = [];
            }
            q.id = this.#id();
            q.sentOn = c;
            this.#write(c, { id: q.id, ...q.frame });
        }
        for (const q of tooLarge) {
            this.#queue.splice(this.#queue.indexOf(q), 1);
            q.reject(new ImError("TOO_LARGE", "over the server's max_frame ("
                + this.#maxFrame + " bytes)"));
        }
    }

    // one timer per connection flushes at the earliest retry due
    #flushAt(c, at) {
        if (c.flushTimer && c.flushTimerAt <= at) {
            return;
        }
        clearTimeout(c.flushTimer);
        c.timers.delete(c.flushTimer);
        c.flushTimerAt = at;
        c.flushTimer = this.#later(c, () => {
            c.flushTimer = null;
            this.#flush();
        }, at - Date.now() + 1);
    }

    // the answer to request f.id: done(q) returns true when q is over
    #answer(f, done) {
        const c = this.#conn;
        const i = this.#queue.findIndex((q) => q.id === f.id
            && q.sentOn === c);
        if (i < 0) {
            return;
        }
        const q = this.#queue[i];
        if (!REPLIES[q.kind].includes(f.body) && f.body !== "error") {
            throw new Error("a " + f.body + " answering a " + q.kind);
        }
        if (done(q)) {
            this.#queue.splice(i, 1);
            this.#flush();
        }
    }

    #groupRequest(kind, group) {
        if (!ID_FORM.test(group || "")) {
            return Promise.reject(new TypeError("bad group id"));
        }
        return this.#enqueue({ kind: "group", frame: { [kind]: { group } } });
    }

    async #presenceSubscribe(users) {
        if (!Array.isArray(users)) {
            throw new TypeError("users: an array of user ids");
        }
        const list = [...new Set(users)];
        if (!list.length || !list.every((u) => ID_FORM.test(u))) {
            throw new TypeError("need valid user ids");
        }
        const answers = [];
        for (let i = 0; i < list.length; i += PRESENCE_CHUNK) {
            const part = list.slice(i, i + PRESENCE_CHUNK);
            answers.push(...await this.#enqueue({
                kind: "presence", frame: { presenceSub: { users: part } },
                users: part, items: [],
            }));
            for (const u of part) {
                this.#watched.add(u);
            }
        }
        return answers;
    }

    // after a reconnect: the watch list again (the answers come as events)
    #resubscribe() {
        const list = [...this.#watched];
        for (let i = 0; i < list.length; i += PRESENCE_CHUNK) {
            const part = list.slice(i, i + PRESENCE_CHUNK);
            if (this.#queue.some((q) => q.kind === "presence"
                && q.users.some((u) => part.includes(u))))
            {
                continue;
            }
            this.#enqueue({
                kind: "presence", frame: { presenceSub: { users: part } },
                users: part, items: [],
            }).catch(() => {});
        }
    }
}

function message(m) {
    return {
        msgId: m.msgId, cursor: m.cursor || m.msgId, from: m.from, to: m.to,
        group: m.group, body: m.body, text: UTF8.decode(m.body), tsMs: m.tsMs,
        clientMsgId: m.clientMsgId, type: m.type,
    };
}

function bodyBytes(b) {
    if (b === undefined || b === null) {
        return new Uint8Array(0);
    }
    if (typeof b === "string") {
        return TEXT.encode(b);
    }
    if (b instanceof ArrayBuffer) {
        return new Uint8Array(b);
    }
    return b instanceof Uint8Array ? b : null;
}

function checkId(id) {
    if (!isMsgId(id)) {
        throw new Error("a bad msg_id " + JSON.stringify(id).slice(0, 40));
    }
}

function randomId() {
    const b = new Uint8Array(12);
    globalThis.crypto.getRandomValues(b);
    let s = "";
    for (const x of b) {
        s += x.toString(16).padStart(2, "0");
    }
    return s;
}
