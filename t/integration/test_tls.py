"""wss://: the stream server with `listen ... ssl` and a certificate made
by openssl for the test; Python's websockets as the client, through a
reload with TLS sessions open (the JS SDK's side: clients/js/test)."""

import asyncio
import ssl
import subprocess

import pytest
import websockets

from imchat import body, close_all, login, wait_for
from imtest import run


@pytest.fixture
def tls(tmp_path):
    """(cert, key, client ssl context) for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=str(cert))
    return cert, key, ctx


def tls_nginx(nginx, tls, workers=2, more=""):
    cert, key, _ = tls
    n = nginx("ssl_certificate %s;\n        ssl_certificate_key %s;\n"
              "        %s" % (cert, key, more),
              workers=workers, listen="ssl")
    n.wss = "wss://127.0.0.1:%d/" % n.port
    return n


def test_chat_over_wss_across_workers(nginx, tls):
    n = tls_nginx(nginx, tls)
    ctx = tls[2]

    async def go():
        alice = await login(n, "alice", url=n.wss, ssl=ctx)
        bob = await login(n, "bob", url=n.wss, ssl=ctx)
        for i in range(20):
            await alice.send_ok("bob", b"m%d" % i, cmid="c%d" % i)
        await bob.until(lambda: len(bob.live_messages()) >= 20, 10,
                        "20 messages over TLS")
        assert [m.body for m in bob.live_messages()] == [
            b"m%d" % i for i in range(20)]
        await close_all([alice, bob])

        # a client that does not speak TLS to the TLS port gets nowhere,
        # and nobody else notices
        r, w = await asyncio.open_connection("127.0.0.1", n.port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        await w.drain()
        assert not (await asyncio.wait_for(r.read(100), 5)).startswith(
            b"HTTP/1.1 101")
        w.close()

    run(go())


def test_reload_with_tls_sessions_open_loses_nothing(nginx, redis, tls):
    """Ten sessions over TLS, a sender going on through `nginx -s
    reload`: every session gets Goaway, is closed with 1001, comes back
    over TLS, and every acknowledged message reaches its recipient."""
    n = tls_nginx(nginx, tls, more="im_drain_window 2s;")
    ctx = tls[2]
    users = ["u%d" % i for i in range(10)]

    async def go():
        chats = {u: await login(n, u, url=n.wss, ssl=ctx) for u in users}
        sender = await login(n, "sender", url=n.wss, ssl=ctx)
        acked = {u: [] for u in users}
        got = {u: [] for u in users}
        goaways = set()

        async def send_all(rounds):
            nonlocal sender
            for r in range(rounds):
                for u in users:
                    while True:
                        try:
                            f = await sender.send(u, b"%d" % r,
                                                  cmid="%s-%d" % (u, r))
                        except (websockets.ConnectionClosed, AssertionError):
                            f = None    # closed before or while it asked
                        if f is not None and body(f) == "send_ack":
                            acked[u].append(f.send_ack.msg_id)
                            break
                        # the sender's worker went away: back, then again
                        await sender.close()
                        sender = await login(n, "sender", url=n.wss,
                                             ssl=ctx, retry=5)
                await asyncio.sleep(0.05)

        sending = asyncio.ensure_future(send_all(30))
        await asyncio.sleep(0.3)
        n.reload()
        await sending

        # each old session was told and closed; collect, reconnect, read
        for u in users:
            c = chats[u]
            await c.until(lambda: c.closed, 10, "%s's close" % u)
            assert c.close_code == 1001, c.close_code
            if any(body(f) == "goaway" for f in c.frames):
                goaways.add(u)
            got[u] += [m.msg_id for m in c.live_messages()]
            chats[u] = await login(n, u, url=n.wss, ssl=ctx, retry=5)
        for u in users:
            c = chats[u]
            await wait_for(lambda: set(acked[u]) <= set(
                got[u] + [m.msg_id for m in c.live_messages()]), 10)
        assert goaways == set(users)
        await close_all(list(chats.values()) + [sender])

    run(go())
