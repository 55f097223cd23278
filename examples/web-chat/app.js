// The web chat: ngx-im-client in a page, no framework.  Conversations are
// built from the inbox: history pages at sign-in and on "Load older",
// then live messages; read receipts and typing for the open one.

import { ImClient, compareMsgId } from "./ngx-im.js";

const LOBBY = "lobby";
const $ = (id) => document.getElementById(id);

let im = null;
let me = "";
let active = "";               // key of the open conversation
let oldest = "";               // the oldest inbox id loaded
const convs = new Map();       // "u:bob" / "g:lobby" -> conversation
let typingTimer = null;
let lastTyping = 0;
let readTimer = null;

function conv(key) {
    let c = convs.get(key);
    if (!c) {
        c = { key, msgs: new Map(), readUpTo: "", unread: 0,
            online: false };
        convs.set(key, c);
        if (key.startsWith("u:")) {
            im.presence.subscribe([key.slice(2)]).then((ps) => {
                for (const p of ps) {
                    presence(p);
                }
            }, () => {});
        }
        renderConvs();
    }
    return c;
}

function keyOf(m) {
    if (m.group) {
        return "g:" + m.group;
    }
    return "u:" + (m.from === me ? m.to : m.from);
}

function add(m, live) {
    if (m.type === "read") {
        receipt({ from: m.from, to: m.to, upTo: m.text });
        return;
    }
    const c = conv(keyOf(m));
    if (c.msgs.has(m.msgId)) {
        return;
    }
    c.msgs.set(m.msgId, m);
    if (live && m.from !== me && c.key !== active) {
        c.unread++;
        renderConvs();
    }
    if (c.key === active) {
        renderMsgs();
        if (live && m.from !== me) {
            markRead();
        }
    }
}

function receipt(r) {
    if (r.from === me) {
        return;
    }
    const c = conv("u:" + r.from);
    if (compareMsgId(r.upTo, c.readUpTo) > 0) {
        c.readUpTo = r.upTo;
        if (c.key === active) {
            renderMsgs();
        }
    }
}

function presence(p) {
    const c = convs.get("u:" + p.user);
    if (c) {
        c.online = p.online;
        renderConvs();
    }
}

// a receipt for the newest message of the open 1:1 chat, once it shows
function markRead() {
    clearTimeout(readTimer);
    readTimer = setTimeout(() => {
        const c = convs.get(active);
        if (!c || !active.startsWith("u:") || document.hidden) {
            return;
        }
        const theirs = [...c.msgs.values()].filter((m) => m.from !== me);
        const last = theirs.sort((a, b) => compareMsgId(a.msgId, b.msgId))
            .pop();
        if (last && compareMsgId(last.msgId, c.sentReceipt || "") > 0) {
            c.sentReceipt = last.msgId;
            im.markRead(last).catch(() => {});
        }
    }, 300);
}

function open(key) {
    active = key;
    const c = conv(key);
    c.unread = 0;
    $("title").textContent = key.startsWith("g:")
        ? "# " + key.slice(2) : key.slice(2);
    $("typing").textContent = "";
    renderConvs();
    renderMsgs();
    markRead();
    $("text").focus();
}

function renderConvs() {
    const ul = $("convs");
    ul.textContent = "";
    for (const c of convs.values()) {
        const li = document.createElement("li");
        li.dataset.key = c.key;
        li.className = c.key === active ? "active" : "";
        const dot = document.createElement("span");
        dot.className = "dot " + (c.key.startsWith("g:") ? "group"
            : c.online ? "online" : "offline");
        li.append(dot, c.key.startsWith("g:") ? "# " + c.key.slice(2)
            : c.key.slice(2));
        if (c.unread) {
            const n = document.createElement("span");
            n.className = "unread";
            n.textContent = c.unread;
            li.append(n);
        }
        li.onclick = () => open(c.key);
        ul.append(li);
    }
}

function renderMsgs() {
    const ol = $("msgs");
    const c = convs.get(active);
    const atEnd = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 4;
    ol.textContent = "";
    if (!c) {
        return;
    }
    const msgs = [...c.msgs.values()]
        .sort((a, b) => compareMsgId(a.msgId, b.msgId));
    for (const m of msgs) {
        const li = document.createElement("li");
        li.className = "msg " + (m.from === me ? "mine" : "theirs");
        li.dataset.id = m.msgId;
        if (m.from !== me && m.group) {
            const f = document.createElement("span");
            f.className = "from";
            f.textContent = m.from;
            li.append(f);
        }
        li.append(m.text);
        if (m.from === me && !m.group) {
            const s = document.createElement("span");
            s.className = "status";
            s.textContent = compareMsgId(m.msgId, c.readUpTo) <= 0
                ? "read" : "sent";
            li.append(s);
        }
        ol.append(li);
    }
    if (atEnd) {
        ol.scrollTop = ol.scrollHeight;
    }
}

async function loadOlder(pages) {
    for (let i = 0; i < pages; i++) {
        const page = await im.history(oldest || undefined, 50);
        for (const m of page.messages) {
            add(m, false);
        }
        if (page.last) {
            oldest = page.last;
        }
        if (!page.more) {
            $("older").disabled = true;
            break;
        }
    }
    renderMsgs();
}

async function signIn(name) {
    me = name;
    // the first token brings the WebSocket URL along
    let first = await demoToken(name);
    im = new ImClient({
        url: first.url, device: tabDevice(),
        getToken: async () => {
            const t = first || await demoToken(name);
            first = null;
            return t.token;
        },
    });
    im.on("message", (m) => add(m, true));
    im.on("receipt", receipt);
    im.on("presence", presence);
    im.on("typing", (t) => {
        const key = t.group ? "g:" + t.group : "u:" + t.from;
        if (key !== active) {
            return;
        }
        $("typing").textContent = t.from + " is typing…";
        clearTimeout(typingTimer);
        typingTimer = setTimeout(() => {
            $("typing").textContent = "";
        }, 3000);
    });
    im.on("state", (s) => {
        $("conn").textContent = s === "open" ? "" : s + "…";
    });
    await im.connect();
    localStorage.setItem("im-demo-user", name);
    $("login").hidden = true;
    $("app").hidden = false;
    $("me").textContent = me;
    await im.groups.join(LOBBY).catch(() => {});
    conv("g:" + LOBBY);
    await loadOlder(2);
    open(active || "g:" + LOBBY);
}

// a device id of this tab, kept across reloads: two tabs sharing one
// would share one cursor, and one would miss what the other acked
function tabDevice() {
    let d = sessionStorage.getItem("im-demo-device");
    if (!d) {
        d = "web-" + crypto.randomUUID().slice(0, 8);
        sessionStorage.setItem("im-demo-device", d);
    }
    return d;
}

// {token, url, expires_at_ms} from the demo endpoint (demo-token.js)
async function demoToken(name) {
    const r = await fetch("/demo/token?user=" + encodeURIComponent(name));
    if (!r.ok) {
        throw new Error("demo token: " + r.status + " "
            + (await r.text()).slice(0, 200));
    }
    return r.json();
}

$("login").onsubmit = (e) => {
    e.preventDefault();
    $("login-error").textContent = "";
    signIn($("login-name").value.trim()).catch((err) => {
        $("login-error").textContent = String(err.message || err);
        im?.close();
    });
};

$("logout").onclick = () => {
    localStorage.removeItem("im-demo-user");
    im.close();
    location.reload();
};

$("add").onsubmit = (e) => {
    e.preventDefault();
    const peer = $("new-peer").value.trim();
    $("new-peer").value = "";
    if (peer && peer !== me) {
        open("u:" + peer);
    }
};

$("composer").onsubmit = async (e) => {
    e.preventDefault();
    const text = $("text").value;
    if (!text || !active) {
        return;
    }
    const target = active.startsWith("g:") ? { group: active.slice(2) }
        : { to: active.slice(2) };
    const key = active;
    let ack;
    try {
        ack = await im.send({ ...target, body: text });
    } catch (err) {
        $("typing").textContent = "not sent: " + (err.reason || err.message);
        return;
    }
    if ($("text").value === text) {
        $("text").value = "";
    }
    const m = { msgId: ack.msgId, from: me, to: target.to || "",
        group: target.group || "", text, type: "", tsMs: ack.tsMs };
    const c = conv(key);
    c.msgs.set(m.msgId, m);
    if (key === active) {
        renderMsgs();
    }
};

$("text").oninput = () => {
    const now = Date.now();
    if (active && now - lastTyping > 1000) {
        lastTyping = now;
        im.typing(active.startsWith("g:") ? { group: active.slice(2) }
            : { to: active.slice(2) });
    }
};

$("older").onclick = () => loadOlder(1);

document.addEventListener("visibilitychange", markRead);

const saved = localStorage.getItem("im-demo-user");
if (saved) {
    signIn(saved).catch(() => {
        $("login").hidden = false;
    });
} else {
    $("login").hidden = false;
}
