// The servers of the SDK's tests: a real redis-server and Debian's nginx
// with the module, on loopback, in a temporary directory each.
//
// IM_BUILD names the build directory (build/ by default): the module is
// IM_BUILD/ngx_stream_im_module.so, tokens come from IM_BUILD/im-token.

import { execFile, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync }
    from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

export const top = resolve(here, "..", "..", "..");
export const build = process.env.IM_BUILD || join(top, "build");
const MODULE = process.env.IM_MODULE
    || join(build, "ngx_stream_im_module.so");
const STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so";
const NGINX = "/usr/sbin/nginx";
const IM_TOKEN = join(build, "im-token");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls cond() (sync or async) until it is truthy; throws after ms. */
export async function waitFor(cond, ms, what) {
    const end = Date.now() + ms;
    for (;;) {
        const v = await cond();
        if (v) {
            return v;
        }
        if (Date.now() > end) {
            throw new Error("timed out waiting for " + what);
        }
        await sleep(20);
    }
}

export function tempDir(name) {
    return mkdtempSync(join(tmpdir(), "im-js-" + name + "-"));
}

export function freePort() {
    return new Promise((res, rej) => {
        const s = createServer();
        s.once("error", rej);
        s.listen(0, "127.0.0.1", () => {
            const { port } = s.address();
            s.close(() => res(port));
        });
    });
}

function answers(port, send, expect) {
    return new Promise((res) => {
        const s = tcpConnect({ host: "127.0.0.1", port });
        const done = (v) => {
            s.destroy();
            res(v);
        };
        s.setTimeout(500, () => done(false));
        s.once("error", () => done(false));
        s.once("connect", () => send && s.write(send));
        s.once("data", (d) => done(!expect || d.toString().startsWith(expect)));
        if (!send) {
            s.once("connect", () => done(true));
        }
    });
}

export class Redis {
    constructor() {
        this.dir = tempDir("redis");
        this.port = 0;
        this.proc = null;
    }

    async start() {
        this.port ||= await freePort();
        this.proc = spawn("redis-server", [
            "--port", String(this.port), "--bind", "127.0.0.1",
            "--dir", this.dir, "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--daemonize", "no",
            "--logfile", join(this.dir, "redis.log"),
        ], { stdio: "ignore" });
        const p = this.proc;
        await waitFor(() => answers(this.port, "PING\r\n", "+PONG"), 10000,
            "redis-server on " + this.port);
        return p;
    }

    /** SIGTERM (or SIGKILL) and wait for the exit. */
    async stop(signal = "SIGTERM") {
        const p = this.proc;
        if (!p || p.exitCode !== null) {
            return;
        }
        const gone = new Promise((r) => p.once("exit", r));
        p.kill(signal);
        await gone;
        this.proc = null;
    }

    async cli(...args) {
        const { stdout } = await run("redis-cli",
            ["-p", String(this.port), ...args.map(String)]);
        return stdout.trim();
    }
}

/**
 * nginx with the module: the stream server on a free port (TLS when
 * options.tls = {cert, key}), `workers` workers, Redis at redis.port;
 * or, with options.runConf, the config of ./build.sh run
 * (t/conf/nginx.conf) with options.tokenPort for its demo endpoint.
 */
export class Nginx {
    constructor(redis, options = {}) {
        this.redis = redis;
        this.o = { workers: 2, server: "", ...options };
        this.dir = tempDir("nginx");
        this.proc = null;
    }

    async start() {
        this.port = await freePort();
        this.httpPort = await freePort();
        this.api = "http://127.0.0.1:" + this.httpPort + "/im/";
        await run(IM_TOKEN, ["keygen", "--out", join(this.dir, "im")]);
        const tls = this.o.tls;
        const scheme = tls ? "wss" : "ws";
        this.url = scheme + "://127.0.0.1:" + this.port + "/";
        this.conf = join(this.dir, "nginx.conf");
        this.log = join(this.dir, "error.log");
        if (this.o.runConf) {
            this.writeRunConf();
        } else {
            this.writeConf(tls);
        }
        this.proc = spawn(NGINX, ["-p", this.dir + "/", "-c", this.conf,
            "-e", this.log,
            "-g", "daemon off; master_process on;"], { stdio: "ignore" });
        await waitFor(() => answers(this.port), 10000, "nginx");
        await this.linksUp(await this.waitWorkers(new Set()));
        return this;
    }

    writeRunConf() {
        const vars = {
            MODULE, PORT: this.port, REDIS: "127.0.0.1:" + this.redis.port,
            DIR: this.dir, HTTP_PORT: this.httpPort,
            WEB: join(top, "examples", "web-chat"),
            BUNDLE: join(build, "web"), TOKEN_PORT: this.o.tokenPort,
            USER: userInfo().username,
        };
        mkdirSync(join(this.dir, "logs"));
        this.log = join(this.dir, "logs", "error.log");
        writeFileSync(this.conf, readFileSync(join(top, "t", "conf",
            "nginx.conf"), "utf8").replace(/@([A-Z_]+)@/g,
            (_, k) => String(vars[k])));
    }

    writeConf(tls) {
        writeFileSync(this.conf, [
            "load_module " + STREAM + ";",
            "load_module " + MODULE + ";",
            "worker_processes " + this.o.workers + ";",
            "error_log " + join(this.dir, "error.log") + " info;",
            "pid " + join(this.dir, "nginx.pid") + ";",
            "events { worker_connections 1024; }",
            "stream {",
            "    server {",
            "        listen 127.0.0.1:" + this.port
                + (tls ? " ssl" : "") + " reuseport;",
            tls ? "        ssl_certificate " + tls.cert + ";" : "",
            tls ? "        ssl_certificate_key " + tls.key + ";" : "",
            "        im;",
            "        im_redis 127.0.0.1:" + this.redis.port + ";",
            "        im_token_key " + join(this.dir, "im.pub") + ";",
            "        im_drain_window 2s;",
            "        " + this.o.server,
            "    }",
            "}",
            "http {",
            "    access_log off;",
            "    server {",
            "        listen 127.0.0.1:" + this.httpPort + ";",
            "        location /im/ { im_api; }",
            "    }",
            "}",
            "",
        ].join("\n"));
    }

    workerPids() {
        // the children of the master that are not shutting down
        let text = "";
        try {
            text = readFileSync("/proc/" + this.proc.pid
                + "/task/" + this.proc.pid + "/children", "utf8");
        } catch {
            return [];
        }
        return text.trim().split(/\s+/).filter(Boolean).map(Number)
            .filter((pid) => {
                try {
                    const cmd = readFileSync("/proc/" + pid + "/cmdline",
                        "utf8");
                    return cmd.includes("worker process")
                        && !cmd.includes("shutting down");
                } catch {
                    return false;
                }
            });
    }

    waitWorkers(old) {
        return waitFor(() => {
            const pids = this.workerPids().filter((p) => !old.has(p));
            return pids.length >= this.o.workers ? pids : null;
        }, 15000, "nginx workers");
    }

    // every worker has logged its Redis link up
    linksUp(pids) {
        return waitFor(() => {
            let log = "";
            try {
                log = readFileSync(this.log, "utf8");
            } catch {
                return false;
            }
            return pids.every((p) => new RegExp("\\] " + p
                + "#\\d+: redis \\S+ is up").test(log));
        }, 15000, "the workers' Redis links");
    }

    /** nginx -s reload; resolves once the new workers' links are up. */
    async reload() {
        const old = new Set(this.workerPids());
        this.proc.kill("SIGHUP");
        await this.linksUp(await this.waitWorkers(old));
    }

    async stop() {
        const p = this.proc;
        if (!p || p.exitCode !== null) {
            return;
        }
        const gone = new Promise((r) => p.once("exit", r));
        p.kill("SIGQUIT");
        const t = setTimeout(() => p.kill("SIGKILL"), 10000);
        await gone;
        clearTimeout(t);
    }

    /** A call of the admin API (docs/api.md): the parsed JSON answer. */
    async call(method, path, body) {
        const r = await fetch(this.api + path, {
            method, body: body === undefined ? undefined
                : JSON.stringify(body),
        });
        const doc = await r.json();
        if (!r.ok) {
            throw new Error(method + " " + path + ": " + r.status + " "
                + JSON.stringify(doc));
        }
        return doc;
    }

    errorLog() {
        return readFileSync(this.log, "utf8");
    }

    /** A token for user, valid for ttl ("1h", "3s", ...). */
    async token(user, ttl = "1h") {
        const { stdout } = await run(IM_TOKEN, ["mint", "--key",
            join(this.dir, "im.key"), "--sub", user, "--ttl", ttl]);
        return stdout.trim();
    }
}

/** A self-signed certificate for 127.0.0.1, made by openssl now. */
export async function makeCert() {
    const dir = tempDir("tls");
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    await run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", key, "-out", cert]);
    return { cert, key, ca: readFileSync(cert) };
}

/** Redis and nginx for one test file; stop() ends both. */
export async function servers(options) {
    const redis = new Redis();
    await redis.start();
    const nginx = new Nginx(redis, options);
    await nginx.start();
    return {
        redis, nginx,
        async stop() {
            await nginx.stop();
            await redis.stop();
        },
    };
}
