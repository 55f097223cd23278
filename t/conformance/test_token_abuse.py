"""Token abuse: every token below is refused (Error UNAUTHENTICATED, then
close 1008) and none of them reaches Redis.  What does reach Redis is
watched two ways: INFO commandstats before and after each case (no
command but the worker's own heartbeat may run), and redis-cli MONITOR
for the whole file (no abusive user id may appear in any command).

Also here, "injection": ids that would become parts of Redis keys, sent
after a good Auth (Send.to, GroupJoin, PresenceSub, Ack, Sync, Auth's
device): each is refused with BAD_FRAME before any command is sent."""

import json
import os
import signal
import subprocess
import time

import pytest

from abtest import ABClient, CONF, OP_BINARY
from imtest import REDIS_CLI, body, encode, error_code, frame, \
    paseto_v4_public, rfc3339, wait_until

CATEGORY = "tokens"

# a 1 MiB token must reach the token check, not the frame size check
SERVER = ("im_max_frame 2m; im_send_queue 4m; im_rate off; "
          "im_auth_timeout 120s; im_ping_interval 100s; "
          "im_idle_timeout 200s;")

# commands a refused Auth or a refused request may never cause
WRITES = ("evalsha", "eval", "hset", "hget", "hdel", "hgetall", "xadd",
          "xrange", "xrevrange", "publish", "get", "del", "sadd", "srem",
          "smembers", "exists")

# every abusive user id below carries this, so MONITOR can spot it
MARK = "zq9"


@pytest.fixture(scope="module")
def monitor(server):
    """redis-cli MONITOR on the server's Redis for the whole file."""
    path = os.path.join(server.dir, "monitor.log")
    out = open(path, "wb")
    p = subprocess.Popen([REDIS_CLI, "-p", str(server.redis.port),
                          "monitor"], stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    wait_until(lambda: os.path.getsize(path) > 0 or p.poll() is not None,
               5, what="redis-cli monitor")
    yield path
    p.send_signal(signal.SIGTERM)
    p.wait(5)
    out.close()


def commandstats(server):
    """{command: calls} from INFO commandstats."""
    stats = {}
    for line in server.redis.cli("info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            calls = dict(kv.split("=") for kv in rest.split(","))["calls"]
            stats[name] = int(calls)
    return stats


@pytest.fixture
def no_redis(server, monitor):
    """Fails the test if it made nginx send a key command to Redis."""
    before = commandstats(server)
    yield
    time.sleep(0.1)
    after = commandstats(server)
    ran = {k: after.get(k, 0) - before.get(k, 0) for k in WRITES
           if after.get(k, 0) != before.get(k, 0)}
    assert not ran, "refused input reached Redis: %s" % ran


def auth(server, token, device="phone", id=1):
    c = ABClient(server.port)
    c.upgrade()
    c.send_ab(OP_BINARY, encode(frame(id=id, auth={"token": token,
                                                   "device": device})))
    return c


def refused(server, token, reason=None):
    """The token gets Error UNAUTHENTICATED (with `reason`), close 1008."""
    with auth(server, token) as c:
        f = c.recv_pb()
        assert body(f) == "error" and f.id == 1, f
        assert f.error.code == error_code("UNAUTHENTICATED"), f
        if reason is not None:
            assert f.error.reason == reason, f
        c.expect_close(1008)


def signed(server, claims, footer=b""):
    """A token signed with the server's key over raw claims text."""
    if not isinstance(claims, (str, bytes)):
        claims = json.dumps(claims)
    return paseto_v4_public(server.token_seed, claims, footer)


FAR = rfc3339(time.time() + 365 * 86400)


def test_a_good_token_does_reach_redis(server, monitor):
    # the control: the checks below would see a login
    before = commandstats(server)
    with auth(server, server.token("alice")) as c:
        f = c.recv_pb()
        assert body(f) == "auth_ok", f
    wait_until(lambda: commandstats(server).get("evalsha", 0)
               > before.get("evalsha", 0), 5, what="the login script")


# --------------------------------------------------------------------------
# size

def test_1_mib_token(server, no_redis):
    refused(server, "v4.public." + "A" * (1024 * 1024), "token too long")


def test_token_one_byte_over_8k(server, no_redis):
    refused(server, "v4.public." + "A" * (8192 - 9), "token too long")


def test_1_mib_of_anything(server, no_redis):
    refused(server, "\U0001F600" * (256 * 1024), "token too long")


def test_1_mib_token_over_im_max_frame_is_1009(make_server):
    n = make_server(CONF)
    with ABClient(n.port) as c:
        c.upgrade()
        c.send_ab(OP_BINARY, encode(frame(id=1, auth={
            "token": "v4.public." + "A" * (1024 * 1024)})))
        c.expect_fail(1009)


# --------------------------------------------------------------------------
# sub: Redis key injection and everything else that is not an id

BAD_SUBS = [
    ("star", "*" + MARK),
    ("glob", MARK + "[a-z]?"),
    ("space", "ali ce" + MARK),
    ("leading-space", " " + MARK),
    ("cr-lf", MARK + "\r\nFLUSHALL"),
    ("lf", MARK + "\nDEL x"),
    ("nul", MARK + "\u0000ice"),
    ("braces", "{u:" + MARK + "}"),
    ("hash-tag", MARK + "}:inbox"),
    ("colon", "u:" + MARK),
    ("slash", MARK + "/../x"),
    ("quote", MARK + "\"'"),
    ("tab", MARK + "\tx"),
    ("unicode", MARK + "é"),
    ("emoji", MARK + "\U0001F600"),
    ("65-chars", MARK + "u" * 62),
    ("empty", ""),
]


@pytest.mark.parametrize("name,sub", BAD_SUBS, ids=[b[0] for b in BAD_SUBS])
def test_sub_that_is_not_an_id(server, no_redis, name, sub):
    # jansson refuses \u0000 in any string: the claims are not JSON to it
    refused(server, server.token(sub), "bad json" if "\u0000" in sub
            else "bad sub")


@pytest.mark.parametrize("sub", [42, None, True, ["alice"], {"u": 1}],
                         ids=["number", "null", "bool", "array", "object"])
def test_sub_that_is_not_a_string(server, no_redis, sub):
    refused(server, signed(server, {"sub": sub, "exp": FAR}), "bad sub")


def test_no_sub(server, no_redis):
    refused(server, signed(server, {"exp": FAR}), "no sub")


def test_two_subs(server, no_redis):
    refused(server, signed(server, '{"sub":"alice","sub":"%s","exp":"%s"}'
                           % (MARK, FAR)), "bad json")


# --------------------------------------------------------------------------
# exp

BAD_EXPS = [
    ("number", 4102444800, "bad exp"),
    ("numeric-string", "4102444800", "bad exp"),
    ("words", "tomorrow", "bad exp"),
    ("date-only", "2099-01-01", "bad exp"),
    ("no-zone", "2099-01-01T00:00:00", "bad exp"),
    ("month-13", "2099-13-01T00:00:00Z", "bad exp"),
    ("feb-30", "2099-02-30T00:00:00Z", "bad exp"),
    ("hour-24", "2099-01-01T24:00:00Z", "bad exp"),
    ("offset-24h", "2099-01-01T00:00:00+24:00", "bad exp"),
    ("offset-no-colon", "2099-01-01T00:00:00+0100", "bad exp"),
    ("empty-fraction", "2099-01-01T00:00:00.Z", "bad exp"),
    ("trailing", "2099-01-01T00:00:00Zjunk", "bad exp"),
    ("space-t", "2099-01-01 00:00:00Z", "bad exp"),
    ("sign-year", "+2099-01-01T00:00:00Z", "bad exp"),
    ("empty", "", "bad exp"),
    ("null", None, "no exp"),
    ("array", ["2099-01-01T00:00:00Z"], "bad exp"),
    ("expired", "2001-01-01T00:00:00Z", "expired"),
    ("now", None, "expired"),
]


@pytest.mark.parametrize("name,exp,reason", BAD_EXPS,
                         ids=[b[0] for b in BAD_EXPS])
def test_malformed_exp(server, no_redis, name, exp, reason):
    if name == "now":
        exp = rfc3339(time.time() - 1)
    claims = {"sub": MARK, "exp": exp}
    if name == "null":
        del claims["exp"]
    refused(server, signed(server, claims), reason)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_malformed_nbf_and_iat(server, no_redis, claim):
    refused(server, signed(server, {"sub": MARK, "exp": FAR,
                                    claim: "yesterday"}), "bad " + claim)


def test_not_yet_valid(server, no_redis):
    refused(server, signed(server, {"sub": MARK, "exp": FAR,
                                    "nbf": rfc3339(time.time() + 3600)}),
            "not yet valid")


# --------------------------------------------------------------------------
# the token itself

def _flips(token):
    """(position, bit) pairs: every bit of the header's first and last
    character, of the first and the last three characters, and of every
    13th character between."""
    n = len(token)
    picks = {0, 9, 10, n - 3, n - 2, n - 1} | set(range(11, n - 3, 13))
    return [(i, b) for i in sorted(picks) for b in range(8)]


def test_bit_flips(server, no_redis):
    good = server.token(MARK)
    bad = []
    for i, bit in _flips(good):
        t = bytearray(good.encode())
        t[i] ^= 1 << bit
        try:
            tok = t.decode()
        except UnicodeDecodeError:
            continue
        with auth(server, tok) as c:
            f = c.recv_pb()
            if body(f) != "error" \
                    or f.error.code != error_code("UNAUTHENTICATED"):
                bad.append((i, bit, tok, str(f)))
            else:
                c.expect_close(1008)
    assert not bad, "bit flips accepted: %r" % bad[:5]


def test_bit_flips_in_the_footer(server, no_redis):
    good = paseto_v4_public(server.token_seed,
                            json.dumps({"sub": MARK, "exp": FAR}),
                            footer=b'{"kid":"k1"}')
    dot = good.rindex(".")
    for i in range(dot + 1, len(good)):
        for bit in (0, 1, 5):
            t = bytearray(good.encode())
            t[i] ^= 1 << bit
            try:
                tok = t.decode()
            except UnicodeDecodeError:
                continue
            refused(server, tok)


MALFORMED = [
    ("empty", "", "not a v4.public token"),
    ("header-only", "v4.public.", "token too short"),
    ("v3", "v3.public.AAAA", "not a v4.public token"),
    ("local", "v4.local.AAAA", "not a v4.public token"),
    ("upper-case", "V4.PUBLIC.AAAA", "not a v4.public token"),
    ("short", "v4.public.AAAA", "token too short"),
    ("bad-base64", "v4.public.*&^%", "bad base64"),
    ("padding", "v4.public.AAAA==", "bad base64"),
    ("empty-footer", None, "malformed token"),
    ("two-footers", None, "malformed token"),
    ("other-key", None, "bad signature"),
    ("no-signature", None, "bad signature"),
]


@pytest.mark.parametrize("name,token,reason", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_token(server, no_redis, name, token, reason):
    good = server.token(MARK)
    if name == "empty-footer":
        token = good + "."
    elif name == "two-footers":
        token = good + ".e30.e30"
    elif name == "other-key":
        token = paseto_v4_public(bytes(32), json.dumps({"sub": MARK,
                                                        "exp": FAR}))
    elif name == "no-signature":
        import base64
        token = "v4.public." + base64.urlsafe_b64encode(
            json.dumps({"sub": MARK, "exp": FAR}).encode() + bytes(64)) \
            .rstrip(b"=").decode()
    refused(server, token, reason)


def test_token_with_nul_and_junk_after_it(server):
    # not MARK: when this is accepted, alice logs in (Redis sees it)
    refused(server, server.token("alice") + "\u0000" + "junk")


# --------------------------------------------------------------------------
# injection after a good Auth: ids that would be parts of Redis keys

@pytest.fixture
def alice(server):
    c = ABClient(server.port)
    c.upgrade()
    c.send_ab(OP_BINARY, encode(frame(id=1, auth={
        "token": server.token("alice"), "device": "phone"})))
    f = c.recv_pb(10)
    assert body(f) == "auth_ok", f
    # let the login's own commands settle before no_redis counts
    time.sleep(0.3)
    while True:
        try:
            c.recv_frame(0.2)
        except (AssertionError, EOFError):
            break
    yield c
    c.close()


def bad_frame(c, f, reason=None):
    c.send_ab(OP_BINARY, encode(f))
    g = c.recv_pb()
    assert body(g) == "error" and g.id == f.id, g
    assert g.error.code == error_code("BAD_FRAME"), g
    if reason is not None:
        assert g.error.reason == reason, g


IDS = ["*" + MARK, MARK + " x", MARK + "\r\nFLUSHALL", "{u:" + MARK + "}",
       MARK + "\u0000", "", MARK * 22]


@pytest.mark.category("injection")
@pytest.mark.parametrize("to", IDS, ids=["star", "space", "crlf", "braces",
                                         "nul-only", "empty", "66-chars"])
def test_send_to_a_bad_recipient(alice, no_redis, to):
    if to == MARK + "\u0000":
        to = "\u0000" + MARK
    bad_frame(alice, frame(id=7, send={"to": to, "body": b"x"}))


@pytest.mark.category("injection")
@pytest.mark.parametrize("cmid", ["*", "a b", "x\r\ny", "{}", "c" * 65])
def test_send_with_a_bad_client_msg_id(alice, no_redis, cmid):
    bad_frame(alice, frame(id=8, send={"to": "bob", "body": b"x",
                                       "client_msg_id": cmid}),
              "bad client_msg_id")


@pytest.mark.category("injection")
@pytest.mark.parametrize("group", ["*", "a b", "{g:x}", ""])
def test_group_join_with_a_bad_group(alice, no_redis, group):
    bad_frame(alice, frame(id=9, group_join={"group": group}))


@pytest.mark.category("injection")
def test_presence_sub_with_a_bad_user(alice, no_redis):
    bad_frame(alice, frame(id=10, presence_sub={"users": ["bob", "*"]}))


@pytest.mark.category("injection")
@pytest.mark.parametrize("up_to", ["*", "1-1\r\nDEL x", "1-1-1", "-1-1",
                                   "18446744073709551616-0", "(1-1", ""])
def test_ack_with_a_bad_msg_id(alice, no_redis, up_to):
    bad_frame(alice, frame(id=11, ack={"up_to": up_to}), "bad msg_id")


@pytest.mark.category("injection")
@pytest.mark.parametrize("after", ["+", "-", "(1-1", "1-1 ", "x"])
def test_sync_with_a_bad_cursor(alice, no_redis, after):
    bad_frame(alice, frame(id=12, sync={"after": after}), "bad msg_id")


@pytest.mark.category("injection")
@pytest.mark.parametrize("receipt", [b"", b"*", b"1-1\r\n"],
                         ids=["empty", "star", "crlf"])
def test_read_receipt_that_is_not_a_msg_id(alice, no_redis, receipt):
    # an empty body reaches ngx_stream_im_msg_id_parse(NULL, 0), whose
    # NULL + 0 clang's UBSan reports (t/fuzz/corpus/codec/
    # regress-read-receipt-empty-body) and gcc's does not check
    bad_frame(alice, frame(id=13, send={"to": "bob", "type": "read",
                                        "body": receipt}),
              "a read receipt's body is a msg_id")


@pytest.mark.category("injection")
@pytest.mark.parametrize("device", ["*", "a b", "x\r\ny", "{}", "d" * 65])
def test_auth_with_a_bad_device(server, no_redis, device):
    with auth(server, server.token(MARK), device=device) as c:
        f = c.recv_pb()
        assert body(f) == "error" and f.error.code == error_code(
            "BAD_FRAME") and f.error.reason == "bad device id", f
        c.echo(2)


def test_no_abusive_id_in_any_redis_command(server, monitor):
    # last in the file: everything above, as Redis saw it
    time.sleep(0.2)
    with open(monitor, "rb") as fp:
        seen = fp.read()
    assert MARK.encode() not in seen, [
        line for line in seen.splitlines() if MARK.encode() in line][:5]
    keys = server.redis.cli("--scan").split()
    assert not [k for k in keys if MARK in k], keys
