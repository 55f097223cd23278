#!/usr/bin/env python3
"""Merge the im-bench runs of bench/run into results.json and print a table.

Reads DIR/run-im.json, run-im-wait1.json (--redis sentinel: the same
with im_redis_wait 1), run-lanying.json, run-nchan.json and
run-mosquitto.json (whichever exist) and writes DIR/results.json.
"""

import argparse
import datetime
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def rnd(v, n=1):
    return None if v is None else round(v, n)


def summary(run, server):
    """The figures of one server's run (login, hold, chat)."""
    if run is None:
        return None

    per = get(run, "hold", "bytes_per_session", default={}) or {}

    if server == "mosquitto":
        idle = per.get("broker")
        parts = {"broker": rnd(idle)}
    else:
        n, r = per.get("nginx"), per.get("redis")
        idle = None if n is None or r is None else n + r
        parts = {"nginx": rnd(n), "redis": rnd(r),
                 "nginx_pss": rnd(per.get("nginx_pss")),
                 "redis_used_memory": rnd(get(
                     run, "hold", "redis_used_memory_per_session"))}

    chat = run.get("chat") or {}

    return {
        "ok": run.get("ok"),
        "sessions": run.get("sessions"),
        "sessions_open_in_hold": get(run, "hold", "open"),
        "nginx_workers": run.get("nginx_workers"),
        "idle_bytes_per_connection": rnd(idle),
        "idle_bytes_by_process": parts,
        "login_avg_ms": rnd(get(run, "login", "login", "avg_ms"), 2),
        "login_p99_ms": rnd(get(run, "login", "login", "p99_ms"), 2),
        "logins_per_s": rnd(get(run, "login", "per_s"), 0),
        "server_cpu_us_per_login": rnd(get(run, "login",
                                           "server_cpu_us_per_login")),
        "chat_offered_per_s": chat.get("offered_per_s"),
        "chat_sent": chat.get("sent"),
        "chat_delivered": chat.get("delivered"),
        "chat_delivered_per_s": rnd(chat.get("delivered_per_s"), 0),
        "chat_p50_ms": rnd(get(chat, "latency", "p50_ms"), 2),
        "chat_p99_ms": rnd(get(chat, "latency", "p99_ms"), 2),
        "chat_p999_ms": rnd(get(chat, "latency", "p999_ms"), 2),
        "server_cpu_us_per_msg": rnd(chat.get("server_cpu_us_per_msg")),
        "server_cpu_s_by_process": chat.get("cpu_s"),
        "client_cpu_us_per_msg": rnd(chat.get("client_cpu_us_per_msg")),
        "server_context_switches_per_msg": rnd(sum(
            v for v in (chat.get("per_msg") or {}).values()), 2)
            if chat.get("per_msg") else None,
        "load_during_chat": [chat.get("load_before"),
                             chat.get("load_after")],
    }


def target_chat(run):
    """The extra chat phase of ngx_im at the target's rate (chat_R)."""
    if run is None:
        return None

    for k, c in run.items():
        if k.startswith("chat_") and isinstance(c, dict):
            return {
                "offered_per_s": c.get("offered_per_s"),
                "sent": c.get("sent"),
                "delivered": c.get("delivered"),
                "delivered_per_s": rnd(c.get("delivered_per_s"), 0),
                "p50_ms": rnd(get(c, "latency", "p50_ms"), 2),
                "p99_ms": rnd(get(c, "latency", "p99_ms"), 2),
                "p999_ms": rnd(get(c, "latency", "p999_ms"), 2),
                "server_cpu_us_per_msg": rnd(c.get("server_cpu_us_per_msg")),
                "server_cpu_s_by_process": c.get("cpu_s"),
                "server_context_switches_per_msg": rnd(sum(
                    v for v in (c.get("per_msg") or {}).values()), 2)
                    if c.get("per_msg") else None,
                "load_during_chat": [c.get("load_before"),
                                     c.get("load_after")],
            }

    return None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def cell(v, fmt="{:,.1f}"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return fmt.format(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--machine", default="")
    args = ap.parse_args()

    im = load(os.path.join(args.dir, "run-im.json"))
    lanying = load(os.path.join(args.dir, "run-lanying.json"))
    nchan = load(os.path.join(args.dir, "run-nchan.json"))
    mosq = load(os.path.join(args.dir, "run-mosquitto.json"))
    wait1 = load(os.path.join(args.dir, "run-im-wait1.json"))

    ours = summary(im, "im") or {}
    res = {
        "sessions": ours.get("sessions"),
        "idle_bytes_per_session_nginx": get(ours, "idle_bytes_by_process",
                                            "nginx"),
        "idle_bytes_per_session_redis": get(ours, "idle_bytes_by_process",
                                            "redis"),
        "login_avg_ms": ours.get("login_avg_ms"),
        "login_p99_ms": ours.get("login_p99_ms"),
        "logins_per_s": ours.get("logins_per_s"),
        "chat_offered_per_s": ours.get("chat_offered_per_s"),
        "chat_delivered_per_s": ours.get("chat_delivered_per_s"),
        "chat_p50_ms": ours.get("chat_p50_ms"),
        "chat_p99_ms": ours.get("chat_p99_ms"),
        "chat_p999_ms": ours.get("chat_p999_ms"),
        "server_cpu_us_per_msg": ours.get("server_cpu_us_per_msg"),
        "lanying_login_avg_ms": rnd(get(lanying, "lanying", "login", "login",
                                        "avg_ms"), 2),
        "lanying_login_p99_ms": rnd(get(lanying, "lanying", "login", "login",
                                        "p99_ms"), 2),
        "lanying_users": get(lanying, "sessions"),
        "lanying_delivered_per_s": rnd(get(lanying, "lanying",
                                           "delivered_per_s"), 0),
        "lanying_p99_ms": rnd(get(lanying, "lanying", "latency", "p99_ms"),
                              2),
        "ngx_im": ours or None,
        "target_chat": target_chat(im),
        "peers": {},
        "machine": args.machine,
        "finished": datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runs": {"im": im, "im_wait1": wait1, "lanying": lanying,
                 "nchan": nchan, "mosquitto": mosq},
    }

    if wait1 is not None:
        w1 = summary(wait1, "im")
        res["im_redis_wait_1"] = w1
        res["im_redis_wait_1_target_chat"] = target_chat(wait1)
        res["ratio_cpu_us_per_msg_wait1_to_wait0"] = ratio(
            w1["server_cpu_us_per_msg"], ours.get("server_cpu_us_per_msg"))

    peers = {}

    for name, run in (("nchan", nchan), ("mosquitto", mosq)):
        s = summary(run, name)
        if s is None:
            continue
        s["ratio_idle_bytes_ours_to_peer"] = ratio(
            ours.get("idle_bytes_per_connection"),
            s["idle_bytes_per_connection"])
        s["ratio_cpu_us_per_msg_ours_to_peer"] = ratio(
            ours.get("server_cpu_us_per_msg"), s["server_cpu_us_per_msg"])
        peers[name] = s

    res["peers"] = peers

    with open(os.path.join(args.dir, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")

    # the table

    cols = [("ngx_im", ours)]
    if wait1 is not None:
        cols = [("ngx_im wait 0", ours),
                ("ngx_im wait 1", res["im_redis_wait_1"])]
    cols += [(k, v) for k, v in peers.items()]
    rows = [
        ("sessions held", "sessions_open_in_hold", "{:,.0f}"),
        ("idle bytes/connection (server)", "idle_bytes_per_connection",
         "{:,.0f}"),
        ("  nginx workers / broker", None, None),
        ("  redis", None, None),
        ("login storm avg ms", "login_avg_ms", "{:,.2f}"),
        ("login storm p99 ms", "login_p99_ms", "{:,.2f}"),
        ("logins/s", "logins_per_s", "{:,.0f}"),
        ("chat offered msg/s", "chat_offered_per_s", "{:,.0f}"),
        ("chat delivered msg/s", "chat_delivered_per_s", "{:,.0f}"),
        ("chat p50 ms", "chat_p50_ms", "{:,.2f}"),
        ("chat p99 ms", "chat_p99_ms", "{:,.2f}"),
        ("chat p999 ms", "chat_p999_ms", "{:,.2f}"),
        ("server CPU us/delivered msg", "server_cpu_us_per_msg", "{:,.1f}"),
        ("server context switches/msg", "server_context_switches_per_msg",
         "{:,.2f}"),
        ("client CPU us/msg", "client_cpu_us_per_msg", "{:,.1f}"),
    ]

    head = ["figure"] + [c[0] for c in cols]
    table = []

    for label, key, fmt in rows:
        line = [label]
        for name, s in cols:
            if not s:
                line.append("-")
                continue
            if key is None:
                parts = s.get("idle_bytes_by_process") or {}
                if label.strip().startswith("nginx"):
                    v = parts.get("nginx", parts.get("broker"))
                else:
                    v = parts.get("redis")
                line.append(cell(v, "{:,.0f}"))
            else:
                line.append(cell(s.get(key), fmt))
        table.append(line)

    if peers:
        for name in peers:
            p = peers[name]
            table.append([f"ours/{name} idle bytes"] + [
                cell(p["ratio_idle_bytes_ours_to_peer"], "{:.3f}")
                if c[0] == name else "" for c in cols])
            table.append([f"ours/{name} CPU us/msg"] + [
                cell(p["ratio_cpu_us_per_msg_ours_to_peer"], "{:.3f}")
                if c[0] == name else "" for c in cols])

    widths = [max(len(str(r[i])) for r in [head] + table)
              for i in range(len(head))]

    print()
    print("  ".join(h.ljust(widths[i]) if i == 0 else h.rjust(widths[i])
                    for i, h in enumerate(head)))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(str(v).ljust(widths[i]) if i == 0
                        else str(v).rjust(widths[i])
                        for i, v in enumerate(r)))

    for label, tc in (("ngx_im", res["target_chat"]),
                      ("ngx_im wait 1",
                       res.get("im_redis_wait_1_target_chat"))):
        if not tc:
            continue
        print()
        print("{} at {} msg/s offered: {} delivered/s, p50 {} ms, "
              "p99 {} ms, p999 {} ms, server CPU {} us/msg".format(
                  label, cell(tc["offered_per_s"], "{:,.0f}"),
                  cell(tc["delivered_per_s"], "{:,.0f}"),
                  cell(tc["p50_ms"], "{:.2f}"), cell(tc["p99_ms"], "{:.2f}"),
                  cell(tc["p999_ms"], "{:.2f}"),
                  cell(tc["server_cpu_us_per_msg"], "{:.1f}")))

    if lanying:
        print()
        print("lanying: {} users, login avg {} ms (p99 {} ms; the origin "
              "story: 72.59 ms), {} msg/s delivered, p99 {} ms".format(
                  res["lanying_users"], cell(res["lanying_login_avg_ms"],
                                             "{:.2f}"),
                  cell(res["lanying_login_p99_ms"], "{:.2f}"),
                  cell(res["lanying_delivered_per_s"], "{:,.0f}"),
                  cell(res["lanying_p99_ms"], "{:.2f}")))

    print()
    print("machine:", args.machine)
    print("results:", os.path.join(args.dir, "results.json"))

    bad = [n for n, r in (("ngx_im", im), ("ngx_im wait 1", wait1),
                          ("lanying", lanying),
                          ("nchan", nchan), ("mosquitto", mosq))
           if r is not None and not r.get("ok")]
    if bad:
        print("incomplete runs:", ", ".join(bad))
        return 1

    return 0


if __name__ == "__main__":
    sys.exit(main())
