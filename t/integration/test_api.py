"""The JSON admin API of ngx_http_im_module (`im_api;` in a location of
nginx's http block): what a backend with only HTTP can do, and every
error status it can get.

Each test starts its own Redis and nginx (stream `im;` plus an http
server on a second loopback port) and talks to the API with urllib and
to the WebSocket side with the raw client.  Waits are bounded; nothing
asserts that something was fast."""

import base64
import json
import signal
import threading
import time

import pytest

from imchat import RawChat, next_id, poll, raw_auth, xlen
from imtest import (OP_BINARY, body, encode, error_code, free_port, frame,
                    http_block, http_get, mint_token, write_key_file)


PREFIX = "/im/"


def api_nginx(nginx, server_directives="", workers=1, http_directives="",
              locations=None, **kw):
    """nginx with `im;` and the API under /im/ on .http_port."""
    hport = free_port()
    n = nginx(server_directives, workers=workers,
              main_directives=http_block(
                  hport, locations or {PREFIX: "im_api;",
                                       "= /health": "im_health;"},
                  http_directives=http_directives), **kw)
    n.http_port = hport
    # every worker's Redis links are up: before, the API answers 503
    assert poll(lambda: links_up(hport, workers), 30), \
        http_get(hport, "/health")
    return n


def links_up(hport, workers):
    status, _, content = http_get(hport, "/health")
    doc = json.loads(content.decode())
    return (status == 200 and len(doc["workers"]) == workers
            and all(w["command"] == "up" and w["subscriber"] == "up"
                    and not w["starting"] for w in doc["workers"]))


def call(n, method, path, obj=None, raw=None, headers=None):
    """(status, parsed JSON body, headers) of one API request."""
    data = raw if raw is not None else (
        json.dumps(obj).encode() if obj is not None else None)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    status, hdrs, content = http_get(n.http_port, PREFIX + path, method,
                                     data, h)
    assert hdrs.get("content-type") == "application/json", (status, hdrs)
    doc = json.loads(content.decode())
    if status >= 400:
        # every error has the same shape
        assert set(doc) == {"error", "reason"}, doc
        assert isinstance(doc["reason"], str) and doc["reason"], doc
    return status, doc, hdrs


def ok(n, method, path, obj=None, status=200):
    s, doc, _ = call(n, method, path, obj)
    assert s == status, (method, path, s, doc)
    return doc


def err(n, method, path, obj=None, status=400, code="BAD_REQUEST", **kw):
    s, doc, _ = call(n, method, path, obj, **kw)
    assert (s, doc["error"]) == (status, code), (method, path, s, doc)
    return doc


def messages(c, count, timeout=10):
    """The next `count` Message frames of RawChat c (others skipped)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        f = c.recv_pb(max(0.01, deadline - time.monotonic()))
        if body(f) == "message":
            out.append(f.message)
    return out


def expect_kicked(c, code, reason, timeout=10):
    """An Error{code, reason} pushed with id 0, then close 1008."""
    deadline = time.monotonic() + timeout
    while True:
        f = c.recv_pb(max(0.01, deadline - time.monotonic()))
        if body(f) == "error":
            break
    assert f.id == 0 and f.error.code == error_code(code), f
    assert f.error.reason == reason, f
    assert c.recv_close(timeout) == (1008, reason)


def sessions_on_both_workers(n, user, device, most=40, port=None):
    """RawChats of user/device until two worker pids are among them."""
    out = []
    for _ in range(most):
        out.append(raw_auth(n, user, device, port=port))
        if len({c.pid for c in out}) == 2:
            return out
    pytest.fail("all %d sessions landed on one worker" % most)


# -- send


def test_send_reaches_a_live_user_and_an_offline_users_replay(nginx, redis):
    n = api_nginx(nginx)
    bob = raw_auth(n, "bob")

    sent = ok(n, "POST", "send", {"from": "system", "to": "bob",
                                  "body": "hello bob", "type": "notice"})
    assert sent["duplicate"] is False and sent["ts_ms"] > 0, sent
    m, = messages(bob, 1)
    assert (m.msg_id, m.__getattribute__("from"), m.to, m.body, m.type) \
        == (sent["msg_id"], "system", "bob", b"hello bob", "notice")
    assert m.ts_ms == sent["ts_ms"]

    # carol is offline: her replay after Auth has it
    sent = ok(n, "POST", "send", {"from": "system", "to": "carol",
                                  "body_b64": base64.b64encode(
                                      b"\x00\xffbin").decode()})
    carol = RawChat(n.port)
    f = carol.auth(n.token("carol"))
    assert body(f) == "auth_ok", f
    m, = messages(carol, 1)
    assert (m.msg_id, m.body) == (sent["msg_id"], b"\x00\xffbin")

    # the backend is no user: nothing was stored for "system"
    assert xlen(redis, "system") == 0


def test_send_is_deduplicated_by_client_msg_id(nginx, redis):
    n = api_nginx(nginx)
    req = {"from": "system", "to": "bob", "body": "once",
           "client_msg_id": "order-42"}
    first = ok(n, "POST", "send", req)
    again = ok(n, "POST", "send", req)
    assert again == dict(first, duplicate=True), (first, again)
    assert xlen(redis, "bob") == 1


def test_send_to_a_group_needs_no_membership_but_a_group(nginx, redis):
    n = api_nginx(nginx)
    err(n, "POST", "send", {"from": "system", "group": "nope", "body": "x"},
        404, "NOT_FOUND")
    ok(n, "PUT", "groups/team", {"open": False}, status=201)
    ok(n, "POST", "groups/team/members", {"add": ["alice", "bob"]})
    alice = raw_auth(n, "alice")
    sent = ok(n, "POST", "send", {"from": "bot", "group": "team",
                                  "body": "standup"})
    m, = messages(alice, 1)
    assert (m.msg_id, m.group, m.body) == (sent["msg_id"], "team",
                                           b"standup")
    assert xlen(redis, "bob") == 1 and xlen(redis, "bot") == 0


@pytest.mark.parametrize("req,status,reason", [
    ({"to": "bob", "body": "x"}, 400, "from"),
    ({"from": "bad id", "to": "bob"}, 400, "from"),
    ({"from": "s", "body": "x"}, 400, "to"),
    ({"from": "s", "to": "bob", "group": "g"}, 400, "to"),
    ({"from": "s", "to": "bo/b"}, 400, "to"),
    ({"from": "s", "to": "bob", "body": "x", "body_b64": "eA=="}, 400,
     "both"),
    ({"from": "s", "to": "bob", "body_b64": "!!"}, 400, "base64"),
    ({"from": "s", "to": "bob", "body": 5}, 400, "string"),
    ({"from": "s", "to": "bob", "client_msg_id": "a b"}, 400,
     "client_msg_id"),
    ({"from": "s", "to": "bob", "type": "t" * 65}, 413, "type"),
    ({"from": "s", "to": "bob", "type": "read", "body": "x"}, 400,
     "receipt"),
    ({"from": "s\u0000", "to": "bob"}, 400, "JSON"),
    ({"from": "s", "to": "bob", "bdy": "typo"}, 400, "unknown field"),
])
def test_bad_sends_are_refused_and_store_nothing(nginx, redis, req, status,
                                                 reason):
    n = api_nginx(nginx)
    doc = err(n, "POST", "send", req, status,
              "TOO_LARGE" if status == 413 else "BAD_REQUEST")
    assert reason in doc["reason"], doc
    assert xlen(redis, "bob") == 0


def test_send_body_at_im_max_frame_and_one_byte_over(nginx, redis):
    n = api_nginx(nginx, "im_max_frame 4k;")
    ok(n, "POST", "send", {"from": "s", "to": "bob", "body": "x" * 4096})
    err(n, "POST", "send", {"from": "s", "to": "bob", "body": "x" * 4097},
        413, "TOO_LARGE")
    assert xlen(redis, "bob") == 1


def test_request_body_of_1_mib_and_one_byte_over(nginx):
    n = api_nginx(nginx, http_directives="client_max_body_size 2m; "
                  "client_body_buffer_size 2m;")
    pad = 1024 * 1024 - len(b'{"users":[],"x":""}')
    raw = b'{"users":[],"x":"' + b"y" * pad + b'"}'
    assert len(raw) == 1024 * 1024
    # at the limit the body is read and judged: an unknown field
    doc = err(n, "POST", "presence", raw=raw)
    assert "unknown field" in doc["reason"]
    err(n, "POST", "presence", raw=raw + b" ", status=413, code="TOO_LARGE")


# -- groups


def test_group_lifecycle_then_a_group_chat(nginx, redis):
    n = api_nginx(nginx, workers=2)
    assert ok(n, "PUT", "groups/g1", {"open": True}, status=201) == \
        {"group": "g1", "open": True, "created": True}
    assert ok(n, "PUT", "groups/g1", {"open": False}) == \
        {"group": "g1", "open": False, "created": False}
    assert ok(n, "POST", "groups/g1/members",
              {"add": ["alice", "bob", "alice"]}) == \
        {"group": "g1", "added": 2, "removed": 0, "size": 2}
    doc = ok(n, "GET", "groups/g1/members")
    assert sorted(doc["members"]) == ["alice", "bob"] and not doc["open"]

    alice, bob = raw_auth(n, "alice"), raw_auth(n, "bob")
    id = next_id()
    alice.send_pb(frame(id=id, send={"group": "g1", "body": b"hi team"}))
    assert body(alice.reply(id)) == "send_ack"
    m, = messages(bob, 1)
    assert (m.group, m.body) == ("g1", b"hi team")

    # removed: bob may no longer send there; a closed group stays closed
    assert ok(n, "POST", "groups/g1/members",
              {"remove": ["bob", "nobody"]})["removed"] == 1
    id = next_id()
    bob.send_pb(frame(id=id, send={"group": "g1", "body": b"still?"}))
    bob.expect_error(id, "FORBIDDEN")
    id = next_id()
    bob.send_pb(frame(id=id, group_join={"group": "g1"}))
    bob.expect_error(id, "FORBIDDEN")

    assert ok(n, "DELETE", "groups/g1") == {"group": "g1", "deleted": True}
    err(n, "GET", "groups/g1/members", status=404, code="NOT_FOUND")
    err(n, "DELETE", "groups/g1", status=404, code="NOT_FOUND")
    err(n, "POST", "groups/g1/members", {"add": ["x"]}, 404, "NOT_FOUND")
    assert redis.cli("EXISTS", "im:{g:g1}:members", "im:{g:g1}:meta") \
        .strip() == "0"


def test_group_size_at_im_group_max_members_and_one_over(nginx, redis):
    n = api_nginx(nginx, "im_group_max_members 3;")
    ok(n, "PUT", "groups/g", {}, status=201)
    ok(n, "POST", "groups/g/members", {"add": ["a", "b", "c"]})
    doc = err(n, "POST", "groups/g/members", {"add": ["d"]}, 409,
              "CONFLICT")
    assert "im_group_max_members" in doc["reason"]
    # all or nothing: the removal in a refused request did not happen
    err(n, "POST", "groups/g/members", {"add": ["d", "e"], "remove": ["a"]},
        409, "CONFLICT")
    assert sorted(ok(n, "GET", "groups/g/members")["members"]) == \
        ["a", "b", "c"]
    # a name removed twice is one member less, not two
    err(n, "POST", "groups/g/members",
        {"add": ["d", "e"], "remove": ["a", "a", "a"]}, 409, "CONFLICT")
    # a swap stays at 3
    assert ok(n, "POST", "groups/g/members",
              {"add": ["d"], "remove": ["a"]})["size"] == 3
    # one list longer than a group can be
    err(n, "POST", "groups/g/members", {"remove": list("abcd")}, 413,
        "TOO_LARGE")


def test_bad_group_requests(nginx):
    n = api_nginx(nginx)
    err(n, "PUT", "groups/g", {"open": "yes"})
    err(n, "PUT", "groups/g", {"open": True, "name": "x"})
    err(n, "PUT", "groups/bad%20id", {})
    err(n, "POST", "groups/g/members", {"add": "alice"})
    err(n, "POST", "groups/g/members", {"add": ["ok", "not ok"]})
    err(n, "PUT", "groups/g", raw=b"[1, 2]")
    err(n, "PUT", "groups/g", raw=b'{"open": true,')
    err(n, "PUT", "groups/g", raw=b'{"open": true, "open": false}')


# -- presence


def test_presence_devices_and_last_seen(nginx):
    n = api_nginx(nginx, "im_presence_max 3;", workers=2)
    phone = raw_auth(n, "bob", "phone")
    laptop = raw_auth(n, "bob", "laptop")
    carol = raw_auth(n, "carol")
    carol.close()

    def carol_seen():
        u = ok(n, "POST", "presence", {"users": ["carol"]})["users"]
        return u["carol"]["last_seen_ms"] > 0 and u["carol"]

    seen = poll(carol_seen, 10)
    assert seen and seen["online"] is False and seen["devices"] == []

    users = ok(n, "POST", "presence",
               {"users": ["bob", "carol", "nobody"]})["users"]
    assert users["bob"]["online"] is True
    assert sorted(users["bob"]["devices"]) == ["laptop", "phone"]
    assert users["nobody"] == {"online": False, "devices": [],
                               "last_seen_ms": 0}
    err(n, "POST", "presence", {"users": ["a", "b", "c", "d"]}, 413,
        "TOO_LARGE")
    err(n, "POST", "presence", {})
    err(n, "POST", "presence", {"users": [1]})
    assert ok(n, "POST", "presence", {"users": []}) == {"users": {}}
    phone.close()
    laptop.close()


# -- disconnect and revoke, on every worker of every node


def two_nodes(nginx, tmp_path, workers=2):
    key = str(tmp_path / "shared.pub")
    seed, _ = write_key_file(key)
    nodes = [api_nginx(nginx, "im_token_key %s;" % key, workers=workers,
                       listen="reuseport") for _ in range(2)]
    for node in nodes:
        node.token_seed = seed
    return nodes


def test_disconnect_a_device_on_every_worker_and_node(nginx, tmp_path):
    a, b = two_nodes(nginx, tmp_path)
    phones = sessions_on_both_workers(a, "bob", "phone")
    phones.append(raw_auth(b, "bob", "phone"))
    laptop = raw_auth(b, "bob", "laptop")
    alice = raw_auth(a, "alice", "phone")

    doc = ok(a, "POST", "users/bob/disconnect",
             {"device": "phone", "reason": "logged out elsewhere"})
    assert doc == {"user": "bob", "disconnected": len(phones)}, doc
    for c in phones:
        expect_kicked(c, "FORBIDDEN", "logged out elsewhere")
    laptop.ping_pong()
    alice.ping_pong()

    # the closed sessions' routes go as they end
    def devices():
        users = ok(b, "POST", "presence", {"users": ["bob"]})["users"]
        return users["bob"]["devices"]

    assert poll(lambda: devices() == ["laptop"], 10), devices()

    # all devices, another code, from the other node
    doc = ok(b, "POST", "users/bob/disconnect", {"code": "UNAUTHENTICATED"})
    assert doc["disconnected"] == 1, doc
    expect_kicked(laptop, "UNAUTHENTICATED", "disconnected by the server")
    assert ok(a, "POST", "users/nobody/disconnect", {}) == \
        {"user": "nobody", "disconnected": 0}
    alice.ping_pong()
    a.wait_log(r'\[info\] .*user "bob" device "phone" disconnected by the '
               r'backend: logged out elsewhere')


def test_bad_disconnects(nginx):
    n = api_nginx(nginx)
    err(n, "POST", "users/bob/disconnect", {"device": "a b"})
    err(n, "POST", "users/bob/disconnect", {"code": "INTERNAL"})
    err(n, "POST", "users/bob/disconnect", {"reason": "r" * 121})
    ok(n, "POST", "users/bob/disconnect", {"reason": "r" * 120})
    err(n, "POST", "users/b%20b/disconnect", {})
    err(n, "POST", "users/bob/revoke", {"before_ms": -1})
    err(n, "POST", "users/bob/revoke", {"before_ms": "now"})


def test_revoke_ends_sessions_and_refuses_older_tokens_on_every_node(
        nginx, tmp_path, redis):
    a, b = two_nodes(nginx, tmp_path)
    seed = a.token_seed
    old = mint_token(seed, sub="bob", iat=time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60)))
    no_iat = mint_token(seed, sub="bob")
    sessions = sessions_on_both_workers(a, "bob", "phone")
    on_b = RawChat(b.port)
    assert body(on_b.auth(old, "tablet")) == "auth_ok"
    sessions.append(on_b)
    alice = raw_auth(a, "alice")

    before = int(time.time() * 1000)
    doc = ok(b, "POST", "users/bob/revoke", {})
    assert doc["disconnected"] == len(sessions), doc
    assert doc["revoked_before_ms"] >= before, doc
    for c in sessions:
        expect_kicked(c, "UNAUTHENTICATED", "token revoked")
    alice.ping_pong()

    # tokens issued before, or with no iat, are refused on both nodes
    for node in (a, b):
        for token in (old, no_iat):
            c = RawChat(node.port)
            f = c.auth(token)
            assert body(f) == "error", f
            assert f.error.code == error_code("UNAUTHENTICATED"), f
            assert f.error.reason == "token revoked", f
            assert c.recv_close() == (1008, "token revoked")
    a.wait_log(r'\[info\] .*user "bob" sent a revoked token')

    # iat has seconds: a token of the next second is newer
    time.sleep(max(0, (doc["revoked_before_ms"] // 1000 + 1) - time.time()))
    fresh = mint_token(seed, sub="bob", iat=time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time())))
    c = RawChat(b.port)
    f = c.auth(fresh)
    assert body(f) == "auth_ok", f

    # a refresh with a revoked token is refused; the session goes on
    id = next_id()
    c.send_pb(frame(id=id, auth={"token": old}))
    e = c.expect_error(id, "UNAUTHENTICATED")
    assert e.error.reason == "token revoked", e
    c.ping_pong()
    id = next_id()
    c.send_pb(frame(id=id, auth={"token": fresh}))
    assert body(c.reply(id)) == "auth_ok"

    # a later revocation time replaces the earlier one
    ok(a, "POST", "users/bob/revoke", {"before_ms": 1000})
    assert redis.cli("GET", "im:{u:bob}:revoked").strip() == "1000"
    c2 = RawChat(a.port)
    assert body(c2.auth(old)) == "auth_ok"


# -- history


def test_history_pages(nginx):
    n = api_nginx(nginx)
    ids = [ok(n, "POST", "send", {"from": "s", "to": "dave",
                                  "body": "m%d" % i})["msg_id"]
           for i in range(5)]
    ids.append(ok(n, "POST", "send", {"from": "s", "to": "dave",
                                      "body_b64": "/w=="})["msg_id"])

    page = ok(n, "GET", "users/dave/history?limit=2")
    assert [m["msg_id"] for m in page["messages"]] == ids[4:]
    assert page["more"] is True
    assert page["messages"][1]["body_b64"] == "/w=="
    assert "body" not in page["messages"][1]
    m = page["messages"][0]
    assert (m["from"], m["to"], m["body"], m["group"]) == \
        ("s", "dave", "m4", "")

    # before and after are cursors, the places in dave's inbox
    whole = ok(n, "GET", "users/dave/history?limit=10")["messages"]
    assert [m["msg_id"] for m in whole] == ids
    cur = [m["cursor"] for m in whole]
    assert len(set(cur)) == 6 and cur != ids
    page = ok(n, "GET", "users/dave/history?limit=3&before=" + cur[4])
    assert [m["msg_id"] for m in page["messages"]] == ids[1:4]
    page = ok(n, "GET", "users/dave/history?after=%s&limit=2" % cur[0])
    assert [m["msg_id"] for m in page["messages"]] == ids[1:3]
    page = ok(n, "GET", "users/dave/history?after=%s&before=%s"
              % (cur[0], cur[3]))
    assert [m["msg_id"] for m in page["messages"]] == ids[1:3]
    assert page["more"] is False
    page = ok(n, "GET", "users/dave/history?limit=1000")
    assert [m["msg_id"] for m in page["messages"]] == ids
    assert ok(n, "GET", "users/nobody/history") == \
        {"messages": [], "more": False}

    for q in ("limit=0", "limit=1001", "limit=x", "before=12", "after=a-b",
              "after=%s&before=%s" % (cur[3], cur[3]),
              "after=%s&before=%s" % (cur[3], cur[1])):
        err(n, "GET", "users/dave/history?" + q)
    # ranges Redis would refuse: nothing is there
    top = "18446744073709551615-18446744073709551615"
    for q in ("before=0-0", "after=" + top):
        assert ok(n, "GET", "users/dave/history?" + q) == \
            {"messages": [], "more": False}, q


# -- the door itself


def test_unknown_paths_and_methods(nginx):
    n = api_nginx(nginx)
    err(n, "GET", "nothing", status=404, code="NOT_FOUND")
    err(n, "GET", "users/bob", status=404, code="NOT_FOUND")
    err(n, "GET", "groups/", status=404, code="NOT_FOUND")
    s, doc, hdrs = call(n, "GET", "send")
    assert (s, doc["error"]) == (405, "METHOD_NOT_ALLOWED")
    assert hdrs["allow"] == "POST"
    s, doc, hdrs = call(n, "POST", "groups/g")
    assert s == 405 and hdrs["allow"] == "PUT, DELETE", hdrs
    s, doc, hdrs = call(n, "PUT", "groups/g/members", {})
    assert s == 405 and hdrs["allow"] == "GET, POST", hdrs


def test_im_api_key(nginx, tmp_path):
    secret = "s3cret-of-the-backend-0123456789"
    key = tmp_path / "api.key"
    key.write_text(secret + "\n")
    n = api_nginx(nginx, locations={
        PREFIX: "im_api; im_api_key %s;" % key, "= /health": "im_health;"})
    s, doc, hdrs = call(n, "POST", "presence", {"users": []})
    assert (s, doc["error"]) == (401, "UNAUTHENTICATED")
    assert hdrs["www-authenticate"] == "Bearer"
    for wrong in ("Bearer " + secret[:-1], "Bearer " + secret + "x",
                  "Basic " + secret, secret):
        s, _, _ = call(n, "POST", "presence", {"users": []},
                       headers={"Authorization": wrong})
        assert s == 401, wrong
    s, doc, _ = call(n, "POST", "presence", {"users": []},
                     headers={"Authorization": "Bearer " + secret})
    assert s == 200, doc


def test_im_api_key_file_must_hold_a_secret(nginx_t, tmp_path):
    for content in ("short\n", "", "two\nlines-of-a-long-enough-secret\n"):
        key = tmp_path / "k"
        key.write_text(content)
        ok_, out = nginx_t(main_directives=http_block(
            free_port(), {PREFIX: "im_api;"},
            http_directives="im_api_key %s;" % key))
        assert not ok_ and "im_api_key" in out or "must hold" in out, out


def test_redis_away_is_503_and_back(nginx, redis):
    n = api_nginx(nginx)
    ok(n, "POST", "send", {"from": "s", "to": "bob", "body": "1"})
    redis.stop()
    doc = err(n, "POST", "send", {"from": "s", "to": "bob", "body": "2"},
              503, "UNAVAILABLE")
    assert "retry" in doc["reason"]
    err(n, "GET", "users/bob/history", status=503, code="UNAVAILABLE")
    redis.start()

    def sent():
        s, doc, _ = call(n, "POST", "send", {"from": "s", "to": "bob",
                                             "body": "3"})
        return s == 200 and doc

    assert poll(sent, 30)


def test_a_reload_answers_the_calls_redis_still_has(nginx, redis):
    """A worker that exits after a reload answers its waiting calls
    before it goes (their timer keeps it), here once Redis wakes up."""
    n = api_nginx(nginx)
    got = {}

    def presence():
        got["reply"] = http_get(n.http_port, PREFIX + "presence", "POST",
                                json.dumps({"users": ["bob"]}).encode(),
                                timeout=30)

    redis.proc.send_signal(signal.SIGSTOP)
    try:
        t = threading.Thread(target=presence)
        t.start()
        time.sleep(0.5)
        n.reload()
        time.sleep(0.5)
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    t.join(30)
    status, hdrs, content = got["reply"]
    assert hdrs.get("content-type") == "application/json", got
    assert status == 200, got
    assert json.loads(content)["users"]["bob"]["online"] is False


def test_a_send_whose_type_is_not_utf8_is_refused(nginx, redis):
    n = api_nginx(nginx)
    alice = raw_auth(n, "alice")
    id = next_id()
    raw = encode(frame(id=id, send={"to": "bob", "body": b"x",
                                    "type": "T"}))
    # field 5 of Send, one byte: "T" becomes a byte that is not UTF-8
    assert raw.count(b"\x2a\x01T") == 1
    alice.send_frame(OP_BINARY, raw.replace(b"\x2a\x01T", b"\x2a\x01\xff"))
    f = alice.expect_error(id, "BAD_FRAME")
    assert f.error.reason == "type is not UTF-8", f
    assert xlen(redis, "bob") == 0
