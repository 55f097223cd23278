"""A session lasts as long as its token: AuthOk says when it expires
(expires_at_ms), the session ends then with Error{UNAUTHENTICATED, "token
expired"} and close 1008, and Auth again with a fresh token for the same
user moves that end (AuthOk, the same session id).  A token of another
user, or a bad one, is refused and the session goes on as before.

Tokens carry whole seconds (RFC 3339); waits are bounded, nothing asserts
that something was fast."""

import time

from imchat import RawChat, next_id
from imtest import (OP_BINARY, body, decode, encode, error_code, frame,
                    ws_frame)


def wait_for_expiry(c, timeout):
    """Frames until the close: (the Error pushed before it, close code,
    reason).  Pings and pongs are skipped."""
    close = c.recv_close(timeout, skip=(0x9, 0xA, OP_BINARY))
    errors = [decode(p) for op, p in c.skipped if op == OP_BINARY]
    errors = [f for f in errors if body(f) == "error"]
    return errors, close


def auth_again(c, token, device=""):
    id = next_id()
    c.send_pb(frame(id=id, auth={"token": token, "device": device}))
    return c.reply(id)


def test_auth_ok_tells_when_the_token_expires(nginx):
    n = nginx()
    exp = int(time.time()) + 3600
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice", exp=exp - time.time()))
        assert body(f) == "auth_ok", f
        # whole seconds: the token's exp is the RFC 3339 second
        assert f.auth_ok.expires_at_ms % 1000 == 0, f
        assert abs(f.auth_ok.expires_at_ms - exp * 1000) <= 1000, f


def test_session_ends_when_its_token_expires(nginx):
    """A token valid for 2 s more: the session is served until then and
    ends with Error{UNAUTHENTICATED, "token expired"} (id 0) and close
    1008 soon after its exp, not before."""
    n = nginx("im_ping_interval 30s; im_idle_timeout 60s;")
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice", exp=2))
        assert body(f) == "auth_ok", f
        exp_ms = f.auth_ok.expires_at_ms
        c.ping_pong()
        errors, (code, reason) = wait_for_expiry(c, 10)
        closed_at = time.time() * 1000
        assert code == 1008 and reason == "token expired", (code, reason)
        assert [(e.id, e.error.code, e.error.reason) for e in errors] == [
            (0, error_code("UNAUTHENTICATED"), "token expired")], errors
        # never before its exp (nginx's clock and ours are the same)
        assert closed_at >= exp_ms, (closed_at, exp_ms)
    n.wait_log(r"\[info\] .*client's token expired")


def test_refresh_before_expiry_keeps_the_session(nginx):
    """Auth again, with a token of the same user valid for an hour, 1 s
    before the old one expires: AuthOk with the same session id and the
    new expires_at_ms, and the session is still served after the old
    exp; with another token of 2 s it ends at that one's exp."""
    n = nginx("im_ping_interval 30s; im_idle_timeout 60s;")
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice", exp=2), device="phone")
        assert body(f) == "auth_ok", f
        session, first_exp = f.auth_ok.session, f.auth_ok.expires_at_ms
        f = auth_again(c, n.token("alice", exp=3600), device="phone")
        assert body(f) == "auth_ok", f
        assert f.auth_ok.session == session, f
        assert f.auth_ok.user == "alice", f
        assert f.auth_ok.expires_at_ms > first_exp + 3000 * 1000, f
        # past the first token's exp, plus the timer's second
        time.sleep(max(0, first_exp / 1000 - time.time()) + 1.5)
        c.ping_pong()
        id = next_id()
        c.send_pb(frame(id=id, send={"to": "bob", "body": b"still here",
                                     "client_msg_id": "r1"}))
        assert body(c.reply(id)) == "send_ack"

        # the device may be left out; a short token shortens the session
        f = auth_again(c, n.token("alice", exp=2))
        assert body(f) == "auth_ok" and f.auth_ok.session == session, f
        errors, (code, reason) = wait_for_expiry(c, 10)
        assert (code, reason) == (1008, "token expired")
    n.wait_log(r"\[info\] .*user \"alice\" device \"phone\" refreshed")


def test_refresh_with_another_user_or_a_bad_token_is_refused(nginx):
    """A token of mallory: Error{FORBIDDEN}; a token of alice for another
    device: Error{BAD_FRAME, "identity changed"}; garbage and an expired
    token: Error{UNAUTHENTICATED}.  After each the session is still
    alice's, served until its own token expires."""
    n = nginx("im_ping_interval 30s; im_idle_timeout 60s;")
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice", exp=3), device="phone")
        assert body(f) == "auth_ok", f
        session = f.auth_ok.session
        f = auth_again(c, n.token("mallory", exp=3600))
        assert body(f) == "error", f
        assert f.error.code == error_code("FORBIDDEN"), f
        f = auth_again(c, n.token("alice", exp=3600), device="laptop")
        assert body(f) == "error", f
        assert f.error.code == error_code("BAD_FRAME"), f
        assert f.error.reason == "identity changed", f
        for tok in ("garbage", n.token("alice", exp=-10)):
            f = auth_again(c, tok)
            assert body(f) == "error", f
            assert f.error.code == error_code("UNAUTHENTICATED"), f
        # still alice: a Send is stored as from her
        id = next_id()
        c.send_pb(frame(id=id, send={"to": "bob", "body": b"x",
                                     "client_msg_id": "m1"}))
        assert body(c.reply(id)) == "send_ack"
        errors, (code, reason) = wait_for_expiry(c, 10)
        assert (code, reason) == (1008, "token expired")
    n.wait_log(r"\[info\] .*client sent a token of another user")
    with RawChat(n.port) as c:
        f = c.auth(n.token("alice"), device="phone")
        assert body(f) == "auth_ok" and f.auth_ok.session != session, f


def test_auth_while_the_first_is_in_flight_is_bad_frame(nginx):
    """Two Auths in one write: the second comes while the first waits for
    Redis, and is refused with BAD_FRAME "already authenticated"; the
    first is answered AuthOk."""
    n = nginx()
    with RawChat(n.port) as c:
        a, b = next_id(), next_id()
        tok = n.token("alice")
        c.send_raw(b"".join(ws_frame(OP_BINARY, encode(frame(
            id=i, auth={"token": tok}))) for i in (a, b)))
        got = {}
        while len(got) < 2:
            f = c.recv_pb(10)
            if f.id in (a, b):
                got[f.id] = f
        assert body(got[a]) == "auth_ok", got[a]
        assert body(got[b]) == "error", got[b]
        assert got[b].error.code == error_code("BAD_FRAME"), got[b]
        assert got[b].error.reason == "already authenticated", got[b]


def test_token_ends_a_draining_session_at_its_exp(nginx):
    """im_drain_window 60s and six sessions whose tokens expire in 3 s;
    nginx reloads.  Each session gets its Goaway, but is not served past
    its token: it ends at its drain delay if that comes first (close
    1001), else at its exp with Error{UNAUTHENTICATED, "token expired"}
    and close 1008, not at a drain delay of up to a minute."""
    n = nginx("im_ping_interval 30s; im_idle_timeout 60s; "
              "im_drain_window 60s;")
    cs = []
    for k in range(6):
        c = RawChat(n.port)
        f = c.auth(n.token("u%d" % k, exp=3))
        assert body(f) == "auth_ok", f
        cs.append((c, f.auth_ok.expires_at_ms))
    n.reload()
    ends = []
    for c, exp_ms in cs:
        errors, (code, reason) = wait_for_expiry(c, 15)
        at = time.time() * 1000
        assert at < exp_ms + 5000, "closed %d ms after exp" % (at - exp_ms)
        if code == 1001:
            assert reason == "server restarting", reason
        else:
            assert (code, reason) == (1008, "token expired"), (code, reason)
            assert [e.error.reason for e in errors] == ["token expired"]
        ends.append(code)
        c.close()
    # six drain delays in a minute: most come after the 3 s tokens
    assert 1008 in ends, ends
