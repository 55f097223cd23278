#!/usr/bin/python3
"""Write the seed corpora of t/fuzz/corpus/<target>/ (run from the repo,
after ./build.sh build: tokens are minted with build/im-token).

    /usr/bin/python3 t/fuzz/seeds.py

The files are committed; this script only says where they came from.
Regression cases (regress-*) are never touched.  Every file is small:
a real request, frame stream, im.Frame or token, good and bad.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "t", "integration"))

import imtest  # noqa: E402
from imtest import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG,  # noqa
                    OP_TEXT, ws_frame)

CORPUS = os.path.join(HERE, "corpus")

# the fuzz_token key: seed bytes 1..32 (t/fuzz/fuzz_token.c)
SEED = bytes(range(1, 33))


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("latin-1")
    with open(os.path.join(d, "seed-" + name), "wb") as fp:
        fp.write(data)


def clear(target):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.unlink(os.path.join(d, f))


# --------------------------------------------------------------------------
# handshake: what a client sends first

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(headers=None, line="GET /chat HTTP/1.1", eol="\r\n",
            extra=()):
    h = [("Host", "chat.example.com"), ("Upgrade", "websocket"),
         ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
         ("Sec-WebSocket-Version", "13")]
    for k, v in (headers or {}).items():
        h = [kv for kv in h if kv[0].lower() != k.lower()]
        if v is not None:
            h.append((k, v))
    h += list(extra)
    return eol.join([line] + ["%s: %s" % kv for kv in h]) + eol + eol


def handshake():
    t = "handshake"
    clear(t)
    write(t, "valid", request())
    write(t, "valid-lf-only", request(eol="\n"))
    write(t, "valid-origin", request({"Origin": "https://chat.example.com"}))
    write(t, "valid-origin-other", request({"Origin": "https://evil.test"}))
    write(t, "valid-subprotocol",
          request({"Sec-WebSocket-Protocol": "chat, im.v1"}))
    write(t, "valid-subprotocol-other",
          request({"Sec-WebSocket-Protocol": "mqtt"}))
    write(t, "valid-case", request({"upgrade": "WebSocket",
                                    "connection": "keep-alive, UPGRADE"}))
    write(t, "valid-tabs", request().replace(": ", ":\t "))
    write(t, "valid-query", request(line="GET /ws?token=abc&x=%20 HTTP/1.1"))
    write(t, "valid-http19", request(line="GET / HTTP/1.9"))
    write(t, "valid-extensions", request(
        {"Sec-WebSocket-Extensions": "permessage-deflate"},
        extra=[("X-Forwarded-For", "10.0.0.1"), ("Cookie", "a=b")]))
    write(t, "valid-pipelined-frame",
          request() + "\x82\x82abcd" + "\x00\x00")
    write(t, "post", request(line="POST /chat HTTP/1.1"))
    write(t, "http10", request(line="GET /chat HTTP/1.0"))
    write(t, "http2", request(line="GET /chat HTTP/2.0"))
    write(t, "target-ctl", request(line="GET /ch\x01at HTTP/1.1"))
    write(t, "no-host", request({"Host": None}))
    write(t, "no-upgrade", request({"Upgrade": None}))
    write(t, "upgrade-h2c", request({"Upgrade": "h2c"}))
    write(t, "no-connection", request({"Connection": "keep-alive"}))
    write(t, "version-8", request({"Sec-WebSocket-Version": "8"}))
    write(t, "version-twice", request(
        extra=[("Sec-WebSocket-Version", "8")]))
    write(t, "no-key", request({"Sec-WebSocket-Key": None}))
    write(t, "key-short", request({"Sec-WebSocket-Key": KEY[:-3] + "="}))
    write(t, "key-bad-last", request(
        {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZB=="}))
    write(t, "key-twice", request(extra=[("Sec-WebSocket-Key", KEY)]))
    write(t, "origin-twice", request(
        {"Origin": "https://a.test"}, extra=[("Origin", "https://b.test")]))
    write(t, "header-no-colon", request(extra=[("X-Bad", "")]).replace(
        "X-Bad: ", "X-Bad"))
    write(t, "header-name-space", request(extra=[("Bad Name", "x")]))
    write(t, "header-empty-name", request().replace(
        "Host:", ":", 1))
    write(t, "partial-line", "GET /chat HTTP/1.1\r\nHost: a")
    write(t, "only-crlf", "\r\n\r\n")
    write(t, "too-long", request(extra=[("X-Pad", "a" * 8300)])[:8192])
    write(t, "binary-junk", bytes(range(256)).decode("latin-1"))


# --------------------------------------------------------------------------
# websocket: byte 0 = max (bits 0-1: 1k, 64k, 1m, 16m) and read cutting
# (bits 2-3: by byte, 1-16, 1-4096, whole); bytes 1-4 seed the cuts

def ws(name, stream, max_sel=0, cut=1, seed=0x12345678):
    write("websocket", name,
          bytes([(max_sel & 3) | (cut & 3) << 2]) + struct.pack("<I", seed)
          + stream)


def close(code=None, reason=b""):
    return ws_frame(OP_CLOSE, imtest.close_payload(code, reason))


def websocket():
    clear("websocket")
    ping = imtest.encode(imtest.frame(id=1, ping={"ts_ms": 5}))
    ws("binary", ws_frame(OP_BINARY, ping))
    ws("binary-bytewise", ws_frame(OP_BINARY, ping), cut=0)
    ws("binary-whole", ws_frame(OP_BINARY, ping), cut=3)
    ws("binary-126", ws_frame(OP_BINARY, b"x" * 126), cut=2)
    ws("binary-1024", ws_frame(OP_BINARY, b"y" * 1024), cut=2)
    ws("binary-1025-too-big", ws_frame(OP_BINARY, b"y" * 1025), cut=2)
    ws("binary-64bit-len-64k", ws_frame(OP_BINARY, b"z" * 300,
                                        length=65536), max_sel=2, cut=2)
    ws("empty-binary", ws_frame(OP_BINARY, b""))
    ws("fragments", ws_frame(OP_BINARY, ping[:2], fin=False)
       + ws_frame(OP_CONT, ping[2:4], fin=False)
       + ws_frame(OP_CONT, ping[4:]))
    ws("fragments-ping-inside", ws_frame(OP_BINARY, b"ab", fin=False)
       + ws_frame(OP_PING, b"hello") + ws_frame(OP_CONT, b"cd"), cut=0)
    ws("fragments-empty", ws_frame(OP_BINARY, b"", fin=False)
       + ws_frame(OP_CONT, b"", fin=False) + ws_frame(OP_CONT, b""))
    ws("fragments-over-max", ws_frame(OP_BINARY, b"a" * 600, fin=False)
       + ws_frame(OP_CONT, b"b" * 600), cut=2)
    ws("ping-125", ws_frame(OP_PING, b"p" * 125), cut=1)
    ws("ping-126", ws_frame(OP_PING, b"p" * 126), cut=1)
    ws("ping-fragmented", ws_frame(OP_PING, b"p", fin=False))
    ws("pong", ws_frame(OP_PONG, b"unsolicited"))
    ws("close-empty", close())
    ws("close-1000", close(1000, b"bye"))
    ws("close-utf8", close(1000, "κόσμε".encode()))
    ws("close-bad-utf8", close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce"
                                     b"\xbc\xce\xb5\xed\xa0\x80edited"))
    ws("close-1-byte", ws_frame(OP_CLOSE, b"\x03"))
    ws("close-1005", close(1005))
    ws("close-4999", close(4999, b"app"))
    ws("close-then-data", close(1000) + ws_frame(OP_BINARY, ping))
    ws("text", ws_frame(OP_TEXT, b"hello"))
    ws("rsv1", ws_frame(OP_BINARY, ping, rsv=4))
    ws("opcode-3", ws_frame(3, b""))
    ws("opcode-b", ws_frame(0xB, b""))
    ws("unmasked", ws_frame(OP_BINARY, ping, mask=False))
    ws("orphan-cont", ws_frame(OP_CONT, b"x"))
    ws("new-msg-in-fragmented", ws_frame(OP_BINARY, b"a", fin=False)
       + ws_frame(OP_BINARY, b"b"))
    ws("len16-not-minimal", ws_frame(OP_BINARY, b"a" * 5, length_form=16))
    ws("len64-not-minimal", ws_frame(OP_BINARY, b"a" * 5, length_form=64))
    ws("len64-top-bit", ws_frame(OP_BINARY, b"", length=2 ** 63,
                                 length_form=64))
    ws("len64-2-62", ws_frame(OP_BINARY, b"", length=2 ** 62), max_sel=3)
    ws("many-small", b"".join(ws_frame(OP_BINARY, bytes([i]) * i)
                              for i in range(40)), cut=1, seed=7)
    ws("mask-unaligned", ws_frame(OP_BINARY, bytes(range(200)),
                                  mask_key=b"\x01\x02\x03\x04"), cut=1,
       seed=99)


# --------------------------------------------------------------------------
# codec: one im.Frame as a client sends it

def codec():
    t = "codec"
    clear(t)
    f = imtest.frame
    pb = imtest.load_pb()
    frames = {
        "ping": f(id=1, ping={"ts_ms": 1700000000000}),
        "pong": f(id=2, pong={"ts_ms": 5}),
        "auth": f(id=3, auth={"token": "v4.public.eyJzdWIiOiJhbGljZSJ9",
                              "device": "phone"}),
        "auth-empty": f(id=3, auth={}),
        "send": f(id=4, send={"to": "bob", "body": b"hello",
                              "client_msg_id": "c-1", "type": "text"}),
        "send-group": f(id=5, send={"group": "team", "body": b"hi"}),
        "send-both": f(id=5, send={"to": "bob", "group": "team"}),
        "send-read": f(id=6, send={"to": "bob", "type": "read",
                                   "body": b"1700000000000-3"}),
        "send-read-bad": f(id=6, send={"to": "bob", "type": "read",
                                       "body": b"17-x"}),
        "send-bad-to": f(id=7, send={"to": "b*b{x}\r\n"}),
        "send-long-type": f(id=7, send={"to": "bob", "type": "t" * 65}),
        "send-big-body": f(id=8, send={"to": "bob", "body": b"\xff" * 3000}),
        "ack": f(id=9, ack={"up_to": "1700000000000-0"}),
        "ack-bad": f(id=9, ack={"up_to": "18446744073709551616-0"}),
        "sync": f(id=10, sync={"after": "1-1", "limit": 50}),
        "sync-before": f(id=10, sync={"before": "99999999999999-0"}),
        "sync-empty": f(id=10, sync={}),
        "presence-sub": f(id=11, presence_sub={"users": ["bob", "carol",
                                                        "", "x" * 65]}),
        "typing": f(id=12, typing={"to": "bob"}),
        "group-join": f(id=13, group_join={"group": "team"}),
        "group-leave": f(id=14, group_leave={"group": "te am"}),
        "server-auth-ok": f(id=15, auth_ok={"user": "a", "max_frame": 1}),
        "server-message": f(id=16, message={"msg_id": "1-0", "body": b"x"}),
        "server-error": f(id=17, error={"code": 1, "reason": "r"}),
        "server-goaway": f(id=18, goaway={"reconnect_after_ms": 10}),
        "server-ok": f(id=19, ok={}),
        "no-body": f(id=20),
        "max-id": f(id=0xFFFFFFFF, ping={}),
    }
    for name, fr in frames.items():
        write(t, name, imtest.encode(fr))
    ping = imtest.encode(f(id=1, ping={"ts_ms": 5}))
    write(t, "unknown-field", ping + b"\xa8\x1f\x01" + b"\xba\x3e\x03abc")
    write(t, "truncated", imtest.encode(frames["send"])[:-3])
    write(t, "bad-wire-type", b"\x0f\x01")
    write(t, "varint-overlong", b"\x08" + b"\xff" * 11)
    write(t, "many-empty-users", imtest.encode(
        f(id=1, presence_sub={"users": [""] * 2000})))
    write(t, "embedded-nul", imtest.encode(
        f(id=1, send={"to": "bob\x00evil", "body": b"x"})))
    write(t, "empty", b"")
    assert pb


# --------------------------------------------------------------------------
# token: byte 0 = mode (0-3 token, 4-5 claims the harness signs, 6 claims,
# 7 key file)

def token():
    t = "token"
    clear(t)
    pub = imtest.ed25519_public(SEED)
    im_token = os.path.join(REPO, "build", "im-token")
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "fuzz.key")
        with open(key, "w") as fp:
            fp.write((SEED + pub).hex() + "\n")

        def mint(sub, *args):
            return subprocess.run(
                [im_token, "mint", "--key", key, "--sub", sub,
                 "--ttl", "3650d"] + list(args), check=True,
                capture_output=True, text=True).stdout.strip()

        tokens = {
            "alice": mint("alice"),
            "long-sub": mint("u" * 64),
            "sub-chars": mint("a.b-c_d@e.f"),
            "footer": mint("bob", "--footer", '{"kid":"k1"}'),
        }
    for name, tok in tokens.items():
        write(t, "token-" + name, b"\x00" + tok.encode())
    alice = tokens["alice"]
    write(t, "token-flipped", b"\x00" + alice[:20].encode()
          + bytes([ord(alice[20]) ^ 1]) + alice[21:].encode())
    write(t, "token-v3", b"\x00" + alice.replace("v4.", "v3.").encode())
    write(t, "token-local", b"\x00" + alice.replace("public", "local")
          .encode())
    write(t, "token-empty-footer", b"\x00" + alice.encode() + b".")
    write(t, "token-two-footers", b"\x00" + alice.encode() + b".e30.e30")
    write(t, "token-header-only", b"\x00v4.public.")
    write(t, "token-short", b"\x00v4.public.AAAA")
    write(t, "token-bad-b64", b"\x00v4.public.*&^%$")
    write(t, "token-other-key", b"\x00" + imtest.mint_token(
        bytes(32), sub="alice", exp=3650 * 86400).encode())

    far, iat = "2035-01-01T00:00:00Z", "2030-01-01T00:00:00Z"

    def claims(**kw):
        c = {"sub": "alice", "exp": far}
        c.update(kw)
        return json.dumps({k: v for k, v in c.items() if v is not None})

    bodies = {
        "valid": claims(),
        "valid-nbf-iat": claims(nbf=iat, iat=iat, aud="x"),
        "frac-offset": claims(exp="2035-01-01T00:00:00.123+05:30"),
        "lower-tz": claims(exp="2035-01-01t00:00:00z"),
        "leap-day": claims(exp="2036-02-29T23:59:60Z"),
        "bad-leap-day": claims(exp="2035-02-29T00:00:00Z"),
        "expired": claims(exp="2020-01-01T00:00:00Z"),
        "not-yet": claims(nbf="2040-01-01T00:00:00Z"),
        "iat-future": claims(iat="2040-01-01T00:00:00Z"),
        "exp-number": claims(exp=2000000000),
        "exp-garbage": claims(exp="tomorrow"),
        "exp-year-9999": claims(exp="9999-12-31T23:59:59Z"),
        "exp-offset-bad": claims(exp="2035-01-01T00:00:00+24:00"),
        "no-exp": claims(exp=None),
        "no-sub": claims(sub=None),
        "sub-star": claims(sub="*"),
        "sub-space": claims(sub="al ice"),
        "sub-crlf": claims(sub="alice\r\nDEL x"),
        "sub-nul": claims(sub="al\u0000ice"),
        "sub-braces": claims(sub="{u:bob}"),
        "sub-65": claims(sub="u" * 65),
        "sub-number": claims(sub=42),
        "sub-empty": claims(sub=""),
        "duplicate-sub": '{"sub":"alice","sub":"bob","exp":"%s"}' % far,
        "array": "[1,2,3]",
        "not-json": "sub=alice",
        "deep": "[" * 2000 + "]" * 2000,
    }
    for name, body in bodies.items():
        write(t, "signed-" + name, b"\x04" + body.encode())
    write(t, "signed-footer-valid", b"\x05" + bodies["valid"].encode())
    write(t, "claims-valid", b"\x06" + bodies["valid"].encode())
    write(t, "claims-sub-nul", b"\x06" + bodies["sub-nul"].encode())
    write(t, "key-hex", b"\x07" + pub.hex().encode() + b"\n")
    write(t, "key-paserk", b"\x07" + imtest.paserk_public(pub).encode())
    write(t, "key-zero", b"\x07" + b"00" * 32)
    write(t, "key-short", b"\x07" + pub.hex()[:-2].encode())


if __name__ == "__main__":
    handshake()
    websocket()
    codec()
    token()
    for t in sorted(os.listdir(CORPUS)):
        print("%-10s %d files" % (t, len(os.listdir(os.path.join(CORPUS,
                                                                 t)))))
