"""Auth with PASETO v4.public tokens: what signs a session in, what is
refused and how (Error{UNAUTHENTICATED}, then close 1008, an [info] line),
device ids, key rotation, and the rules around the first frame."""

import json
import os
import re
import time

import pytest

from imtest import (body, error_code, frame, mint_token, paseto_v4_public,
                    rfc3339, run, wait_until, write_key_file)
from imchat import RawChat, cursor_key, login, next_id, redis_cmd


def close_1008(n, c, log=r"client sent a bad token"):
    """The server closes c with 1008 after its Error, drops the TCP
    connection once the closing handshake is done, and says why at info."""
    code, reason = c.recv_close(timeout=10)
    assert code == 1008, "close %s %r, expected 1008" % (code, reason)
    try:
        c.send_close(1008)
    except OSError:
        pass
    assert c.wait_eof(10), "the server kept the connection after its close"
    n.wait_log(r"\[info\] .*" + log)


def refused(n, token, device=""):
    """Auth with `token` gets Error{UNAUTHENTICATED} with the request's id,
    then close 1008 and an [info] line; returns the Error."""
    with RawChat(n.port) as c:
        id = next_id()
        f = c.auth(token, device, id=id)
        assert body(f) == "error", f
        assert f.id == id, f
        assert f.error.code == error_code("UNAUTHENTICATED"), f
        assert f.error.reason, f
        close_1008(n, c)
        return f.error


def signed_in(n, token, user, device="", id=None):
    """Auth with `token` gets AuthOk for `user` with the request's id."""
    with RawChat(n.port) as c:
        id = id or next_id()
        f = c.auth(token, device, id=id)
        assert body(f) == "auth_ok", f
        assert f.id == id
        assert f.auth_ok.user == user
        c.ping_pong()
        return f.auth_ok


# --------------------------------------------------------------------------
# good tokens

def test_good_token_gets_auth_ok(nginx):
    n = nginx("im_ping_interval 20s; im_max_frame 32k;", workers=2)
    for id in (1, 0xFFFFFFFF, 77):
        ok = signed_in(n, n.token("alice"), "alice", id=id)
        assert ok.session, ok
        host, pid, number, device = ok.session.split(":")
        assert host and number.isdigit(), ok.session
        assert device == "default", ok.session
        assert int(pid) in n.worker_pids(), (ok.session, n.worker_pids())
        assert ok.ping_interval_ms == 20000, ok
        assert ok.max_frame == 32 * 1024, ok
    n.wait_log(r'\[info\] .*user "alice" device "default" signed in')


def test_auth_ok_defaults(nginx):
    n = nginx()
    ok = signed_in(n, n.token("bob"), "bob")
    assert ok.ping_interval_ms == 30000, ok
    assert ok.max_frame == 65536, ok


def test_session_ids_are_distinct(nginx):
    n = nginx(workers=2)
    sessions = set()
    for i in range(6):
        sessions.add(signed_in(n, n.token("alice"), "alice").session)
    assert len(sessions) == 6, sessions


@pytest.mark.parametrize("sub", [
    "a", "x" * 64, "Alice_Smith.99@example-host.org", "0", "-", "@", "_.-@",
])
def test_valid_user_ids(nginx, sub):
    n = nginx()
    signed_in(n, n.token(sub), sub)


def test_optional_claims_in_the_past_are_fine(nginx):
    n = nginx()
    past = rfc3339(time.time() - 60)
    signed_in(n, n.token("alice", nbf=past, iat=past), "alice")
    signed_in(n, n.token("alice", exp=rfc3339(time.time() + 7200)), "alice")


def test_token_with_footer(nginx):
    n = nginx()
    tok = mint_token(n.token_seed, sub="carol", footer=b'{"kid":"k1"}')
    signed_in(n, tok, "carol")


def test_default_device_when_empty(nginx, redis):
    n = nginx()

    async def go():
        bob = await login(n, "bob", device="phone")
        alice = await login(n, "alice")          # device ""
        ack = await bob.send_ok("alice", b"hi", cmid="c1")
        await alice.until(lambda: alice.live_messages(), 10, "the message")
        seen = alice.live_messages()[0]
        assert seen.msg_id == ack.msg_id
        await alice.ack(seen.cursor)
        wait_until(lambda: redis_cmd(redis, "HGET", cursor_key("alice"),
                                     "default"), 10, what="cursor of default")
        cur = redis_cmd(redis, "HGETALL", cursor_key("alice"))
        assert cur == [b"default", seen.cursor.encode()], cur

        # device "default" named explicitly is the same device: its cursor
        # is past the message, so nothing is replayed to it
        await bob.send_ok("alice", b"second", cmid="c2")
        again = await login(n, "alice", device="default")
        await again.until(lambda: again.live_messages(), 10, "the replay")
        assert [m.body for m in again.live_messages()] == [b"second"]
        for c in (alice, bob, again):
            await c.close()

    run(go())
    n.wait_log(r'\[info\] .*user "alice" device "default" signed in')
    n.wait_log(r'\[info\] .*user "bob" device "phone" signed in')


# --------------------------------------------------------------------------
# refused tokens

def _forged(n):
    return mint_token(os.urandom(32), sub="alice")


def _expired(n):
    return n.token("alice", exp=-120)


def _expired_long_ago(n):
    return n.token("alice", exp="2001-01-01T00:00:00Z")


def _nbf_future(n):
    return n.token("alice", nbf=rfc3339(time.time() + 3600))


def _iat_future(n):
    return n.token("alice", iat=rfc3339(time.time() + 3600))


def _no_exp(n):
    return paseto_v4_public(n.token_seed, json.dumps({"sub": "alice"}))


def _bad_exp(n):
    return n.token("alice", exp="tomorrow")


def _numeric_exp(n):
    return paseto_v4_public(n.token_seed, json.dumps(
        {"sub": "alice", "exp": int(time.time()) + 3600}))


def _no_sub(n):
    return n.token(None)


def _claims_not_json(n):
    return paseto_v4_public(n.token_seed, b"not json at all")


def _claims_array(n):
    return paseto_v4_public(n.token_seed, b'["alice"]')


def _v3_public(n):
    return "v3.public." + n.token("alice")[len("v4.public."):]


def _v4_local(n):
    return "v4.local." + n.token("alice")[len("v4.public."):]


def _upper_prefix(n):
    return "V4.PUBLIC." + n.token("alice")[len("v4.public."):]


def _flipped_bit(n):
    tok = n.token("alice")
    i = len("v4.public.") + 5
    return tok[:i] + ("A" if tok[i] != "A" else "B") + tok[i + 1:]


def _truncated(n):
    return n.token("alice")[:-10]


def _other_footer(n):
    return n.token("alice") + ".eyJraWQiOiJ4In0"


def _garbage(n):
    return "garbage"


def _empty(n):
    return ""


def _prefix_only(n):
    return "v4.public."


def _bad_base64(n):
    return "v4.public.!!!!"


def _no_room(n):
    # decodes, but is shorter than a signature
    return "v4.public." + "A" * 60


def _too_long(n):
    return "v4.public." + "A" * 9000


@pytest.mark.parametrize("make", [
    _forged, _expired, _expired_long_ago, _nbf_future, _iat_future, _no_exp,
    _bad_exp, _numeric_exp, _no_sub, _claims_not_json, _claims_array,
    _v3_public, _v4_local, _upper_prefix, _flipped_bit, _truncated,
    _other_footer, _garbage, _empty, _prefix_only, _bad_base64, _no_room,
    _too_long,
], ids=lambda f: f.__name__.strip("_"))
def test_bad_token_is_refused(nginx, make):
    n = nginx()
    refused(n, make(n))
    # refusing one client affects nobody else
    signed_in(n, n.token("alice"), "alice")


def test_refusal_reasons_in_log(nginx):
    n = nginx()
    for make, why in ((_forged, "bad signature"), (_expired, "expired"),
                      (_nbf_future, "not yet valid"),
                      (_v4_local, "not a v4.public token")):
        e = refused(n, make(n))
        n.wait_log(r"\[info\] .*client sent a bad token: " + re.escape(why))
        assert why in e.reason, e


@pytest.mark.parametrize("sub", [
    "", "*", "a b", " alice", "alice ", "{}", "x" * 65, "a\r\nb", "a\nb",
    "a\rb", "a/b", "a:b", "al\u00efce", "a\tb", "a\x00b",
], ids=repr)
def test_bad_sub_is_refused(nginx, sub):
    n = nginx()
    refused(n, n.token(sub))
    n.wait_log(r"\[info\] .*client sent a bad token: bad (sub|json)")


@pytest.mark.parametrize("sub", [{}, [], 5, None, True],
                         ids=lambda v: json.dumps(v))
def test_sub_not_a_string_is_refused(nginx, sub):
    n = nginx()
    tok = paseto_v4_public(n.token_seed, json.dumps(
        {"sub": sub, "exp": rfc3339(time.time() + 3600)}))
    refused(n, tok)


# --------------------------------------------------------------------------
# devices

@pytest.mark.parametrize("device", [
    "a b", "x" * 65, "*", "{}", "dev\r\n", "ph\u00f6ne",
], ids=repr)
def test_bad_device_is_bad_frame_and_retry_works(nginx, device):
    n = nginx()
    with RawChat(n.port) as c:
        id = next_id()
        f = c.auth(n.token("alice"), device, id=id)
        assert body(f) == "error" and f.id == id, f
        assert f.error.code == error_code("BAD_FRAME"), f
        n.wait_log(r"\[info\] .*client sent a bad device id")
        # not authenticated yet: the session is still there to retry
        c.ping_pong()
        id2 = next_id()
        f = c.auth(n.token("alice"), "phone", id=id2)
        assert body(f) == "auth_ok" and f.id == id2, f
        assert f.auth_ok.user == "alice"
        c.ping_pong()
    n.wait_log(r'\[info\] .*user "alice" device "phone" signed in')


def test_device_of_64_chars(nginx):
    n = nginx()
    signed_in(n, n.token("alice"), "alice", device="d" * 64)
    n.wait_log(r'device "%s" signed in' % ("d" * 64))


# --------------------------------------------------------------------------
# key rotation

def test_two_keys_both_work(nginx, tmp_path):
    k1, k2 = tmp_path / "k1.pub", tmp_path / "k2.pub"
    seed1, _ = write_key_file(k1)
    seed2, _ = write_key_file(k2, form="paserk")
    n = nginx("im_token_key %s; im_token_key %s;" % (k1, k2), workers=2)
    signed_in(n, mint_token(seed1, sub="alice"), "alice")
    signed_in(n, mint_token(seed2, sub="bob"), "bob")
    signed_in(n, mint_token(seed1, sub="carol"), "carol")
    refused(n, mint_token(os.urandom(32), sub="alice"))
    # the keys are not interchangeable with each other's claims
    refused(n, mint_token(seed2, sub="alice", exp=-5))


# --------------------------------------------------------------------------
# the first frame

@pytest.mark.parametrize("req", [
    {"send": {"to": "bob", "body": b"hi", "client_msg_id": "c1"}},
    {"sync": {"after": "", "limit": 5}},
    {"ack": {"up_to": "1-0"}},
    {"presence_sub": {"users": ["bob"]}},
    {"group_join": {"group": "g"}},
    {"group_leave": {"group": "g"}},
], ids=lambda r: next(iter(r)))
def test_frames_before_auth_are_unauthenticated(nginx, req):
    n = nginx()
    with RawChat(n.port) as c:
        for _ in range(2):
            id = next_id()
            c.send_pb(frame(id=id, **req))
            c.expect_error(id, "UNAUTHENTICATED")
        n.wait_log(r"\[info\] .*client sent frame \d+ before Auth")
        # the session goes on: Ping works and Auth still signs it in
        c.ping_pong()
        id = next_id()
        f = c.auth(n.token("alice"), id=id)
        assert body(f) == "auth_ok" and f.id == id, f


def test_send_before_auth_stores_nothing(nginx, redis):
    n = nginx()
    with RawChat(n.port) as c:
        id = next_id()
        c.send_pb(frame(id=id, send={"to": "bob", "body": b"sneaky"}))
        c.expect_error(id, "UNAUTHENTICATED")
        c.ping_pong()
    assert redis_cmd(redis, "EXISTS", "im:{u:bob}:inbox") == 0


def test_second_auth_refreshes_or_is_refused(nginx):
    """Auth on a signed-in session is a token refresh: alice's fresh token
    gets AuthOk (the same session), mallory's Error{FORBIDDEN}, garbage
    Error{UNAUTHENTICATED}; the session stays alice's and open (more in
    test_token_lifetime.py)."""
    n = nginx()
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice"))
        assert body(f) == "auth_ok", f
        session = f.auth_ok.session
        for tok, want in ((n.token("alice"), None),
                          (n.token("mallory"), "FORBIDDEN"),
                          ("garbage", "UNAUTHENTICATED")):
            id = next_id()
            c.send_pb(frame(id=id, auth={"token": tok}))
            if want is None:
                f = c.reply(id)
                assert body(f) == "auth_ok", f
                assert f.auth_ok.session == session, f
            else:
                c.expect_error(id, want)
        # still alice, still open: a Send is stored as from alice
        id = next_id()
        c.send_pb(frame(id=id, send={"to": "bob", "body": b"x",
                                     "client_msg_id": "m1"}))
        f = c.reply(id)
        assert body(f) == "send_ack", f
        c.ping_pong()


def test_auth_timeout_closes_1008(nginx):
    n = nginx("im_auth_timeout 1s;")
    with RawChat(n.port) as c:
        close_1008(n, c, r"client sent no Auth in time")


def test_pings_do_not_extend_auth_timeout(nginx):
    n = nginx("im_auth_timeout 1s;")
    with RawChat(n.port) as c:
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline:
            id = next_id()
            try:
                c.send_pb(frame(id=id, ping={"ts_ms": 1}))
            except OSError:
                closed = True
                break
            fin, op, payload = c.recv_frame(timeout=10)
            if op == 0x8:
                code = int.from_bytes(payload[:2], "big")
                assert code == 1008, payload
                closed = True
                break
            time.sleep(0.2)
        assert closed, "pings kept an unauthenticated session open for 10s"
    n.wait_log(r"\[info\] .*client sent no Auth in time")


def test_authenticated_session_outlives_auth_timeout(nginx):
    n = nginx("im_auth_timeout 1s;")
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice"))
        assert body(f) == "auth_ok", f
        time.sleep(1.6)
        c.ping_pong()
