"""Validation of the im_* directives, through `nginx -t`."""

import os
import re

import pytest

from imtest import b64url, ed25519_public, paserk_public, write_key_file


def key_files(n=1):
    """{name: content} of n fresh hex public key files k0.pub, k1.pub..."""
    return {"k%d.pub" % i: ed25519_public(os.urandom(32)).hex() + "\n"
            for i in range(n)}


def failed(result, pattern):
    """nginx -t failed, with an [emerg] line matching pattern that names
    the config file and line."""
    ok, out = result
    assert not ok, "nginx -t passed:\n" + out
    assert re.search(r"\[emerg\] .*" + pattern, out), out
    return out


def passed(result):
    ok, out = result
    assert ok, "nginx -t failed:\n" + out
    assert "test is successful" in out, out


SAMPLE = """
        im_token_key {dir}/k0.pub;
        im_token_key {dir}/k1.paserk;
        im_auth_timeout 10s;
        im_ping_interval 30s;
        im_idle_timeout 90s;
        im_max_frame 64k;
        im_origins https://chat.example.com http://localhost:8080;
"""


def test_sample_config_with_all_directives_passes(nginx_t):
    pub = ed25519_public(os.urandom(32))
    files = dict(key_files(1), **{"k1.paserk": paserk_public(pub)})
    passed(nginx_t(SAMPLE, redis_addr="127.0.0.1:6379", files=files))
    passed(nginx_t(SAMPLE, redis_addr="unix:/run/redis/redis.sock",
                   files=files))


def test_directives_at_stream_level_are_inherited(nginx_t):
    passed(nginx_t("", redis_addr=None, token_key=False, files=key_files(1),
                   stream_directives=(
                       "im_redis 127.0.0.1:6379; "
                       "im_token_key {dir}/k0.pub; "
                       "im_auth_timeout 5s; im_ping_interval 10s; "
                       "im_idle_timeout 20s; im_max_frame 128k; "
                       "im_origins https://chat.example.com;")))


# --------------------------------------------------------------------------
# im_max_frame

@pytest.mark.parametrize("value", ["10", "1023", "17m", "16777217"])
def test_im_max_frame_out_of_bounds_fails(nginx_t, value):
    out = failed(nginx_t("im_max_frame %s;" % value),
                 r"1024.*nginx\.conf:\d+")
    line = int(re.search(r"nginx\.conf:(\d+)", out).group(1))
    conf = re.search(r"in (\S+nginx\.conf):", out).group(1)
    with open(conf) as fp:
        assert "im_max_frame" in fp.read().splitlines()[line - 1]


def test_im_max_frame_not_a_size_fails(nginx_t):
    failed(nginx_t("im_max_frame lots;"), r"im_max_frame")


@pytest.mark.parametrize("value", ["1k", "1024", "64k", "128k"])
def test_im_max_frame_in_bounds_passes(nginx_t, value):
    passed(nginx_t("im_max_frame %s;" % value))



# --------------------------------------------------------------------------
# timeouts

@pytest.mark.parametrize("directives", [
    "im_idle_timeout 10s; im_ping_interval 30s;",
    "im_idle_timeout 30s; im_ping_interval 30s;",
    "im_idle_timeout 20s;",             # the ping interval defaults to 30s
])
def test_idle_timeout_not_above_ping_interval_fails(nginx_t, directives):
    failed(nginx_t(directives), r'"im_idle_timeout" must be greater than '
                                r'"im_ping_interval"')


@pytest.mark.parametrize("directives", ["im_ping_interval 0;",
                                        "im_auth_timeout 0;"])
def test_zero_timeouts_fail(nginx_t, directives):
    failed(nginx_t(directives), r"must not be zero")


def test_timeout_not_a_time_fails(nginx_t):
    failed(nginx_t("im_auth_timeout soon;"), r"im_auth_timeout")


def test_short_timeouts_pass(nginx_t):
    passed(nginx_t("im_auth_timeout 1s; im_ping_interval 500ms; "
                   "im_idle_timeout 1500ms;"))


# --------------------------------------------------------------------------
# im_redis

@pytest.mark.parametrize("addr", ["localhost:6379", "localhost",
                                  "redis.example.com:6379"])
def test_im_redis_needs_an_ip_literal(nginx_t, addr):
    failed(nginx_t("", redis_addr=addr), r"im_redis.*needs an IP address")


@pytest.mark.parametrize("addr", ["unix:/tmp/x.sock", "127.0.0.1",
                                  "127.0.0.1:6380", "[::1]:6379"])
def test_im_redis_good_addresses_pass(nginx_t, addr):
    passed(nginx_t("", redis_addr=addr))


def test_im_redis_twice_fails(nginx_t):
    failed(nginx_t("im_redis 127.0.0.1:6380;", redis_addr="127.0.0.1:6379"),
           r"im_redis.*duplicate")


SENTINELS16 = ",".join("127.0.0.1:%d" % (26379 + i) for i in range(16))


@pytest.mark.parametrize("addr", [
    "sentinel:127.0.0.1:26379/mymaster",
    "sentinel:127.0.0.1/mymaster",
    "sentinel:127.0.0.1:26379,127.0.0.2:26380,[::1]:26381/m-1.x",
    "sentinel:%s/mymaster" % SENTINELS16])
def test_im_redis_sentinels_pass(nginx_t, addr):
    passed(nginx_t("", redis_addr=addr))


@pytest.mark.parametrize("addr, pattern", [
    ("sentinel:127.0.0.1:26379", r"needs sentinel:HOST:PORT"),
    ("sentinel:/mymaster", r"needs sentinel:HOST:PORT"),
    ("sentinel:127.0.0.1:26379/", r"needs sentinel:HOST:PORT"),
    ("sentinel:localhost:26379/m", r"needs an IP address"),
    ("sentinel:127.0.0.1:26379,/m", r"needs an IP address"),
    ("sentinel:%s,127.0.0.1:1/m" % SENTINELS16, r"more than 16 sentinels"),
    ("sentinel:127.0.0.1/" + "m" * 129, r"needs sentinel:HOST:PORT"),
])
def test_im_redis_bad_sentinels_fail(nginx_t, addr, pattern):
    failed(nginx_t("", redis_addr=addr), pattern)


@pytest.mark.parametrize("value", ["0", "0 1ms", "1 1s", "16 3000ms",
                                   "2 3s"])
def test_im_redis_wait_in_bounds_passes(nginx_t, value):
    passed(nginx_t("im_redis_wait %s;" % value))


@pytest.mark.parametrize("value", ["17 1s", "-1 1s", "x 1s", "1 0",
                                   "1 3001ms", "1 4s", "1 x", "1"])
def test_im_redis_wait_out_of_bounds_fails(nginx_t, value):
    failed(nginx_t("im_redis_wait %s;" % value), r"im_redis_wait.*needs")


def test_im_redis_wait_twice_fails(nginx_t):
    failed(nginx_t("im_redis_wait 1 1s; im_redis_wait 1 1s;"),
           r"im_redis_wait.*duplicate")


@pytest.mark.parametrize("content", ["secret\n", "secret", "u1 secret\r\n",
                                     "x" * 512, "x" * 512 + "\r\n",
                                     "a b c\n"])
def test_im_redis_password_files_pass(nginx_t, content):
    passed(nginx_t("im_redis_password {dir}/pw; "
                   "im_redis_sentinel_password {dir}/pw;",
                   files={"pw": content}))


@pytest.mark.parametrize("content", ["", "\n", "x" * 513, "x" * 513 + "\n",
                                     " secret", "user \n", "a\nb", "a\x00b",
                                     "a\n\n"])
def test_im_redis_bad_password_files_fail(nginx_t, content):
    failed(nginx_t("im_redis_password {dir}/pw;", files={"pw": content}),
           r"(is not a password file|holds no password)")


def test_im_redis_password_fifo_fails_without_hanging(nginx_t, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    failed(nginx_t("im_redis_password %s;" % fifo),
           r"is not a password file")


def test_im_redis_password_missing_file_and_twice_fail(nginx_t):
    failed(nginx_t("im_redis_password {dir}/nope;"), r"open\(\) .*nope")
    failed(nginx_t("im_redis_password {dir}/pw; im_redis_password {dir}/pw;",
                   files={"pw": "x"}), r"im_redis_password.*duplicate")


@pytest.mark.parametrize("value, ok", [("0", True), ("65535", True),
                                       ("65536", False), ("-1", False)])
def test_im_redis_db_bounds(nginx_t, value, ok):
    r = nginx_t("im_redis_db %s;" % value)
    if ok:
        passed(r)
    else:
        failed(r, r"im_redis_db")


# --------------------------------------------------------------------------
# im_origins

@pytest.mark.parametrize("origin", ["chat.example.com", "https://a/b",
                                    "https://", "https://chat.example.com/",
                                    "ftp://chat.example.com",
                                    "https://user@chat.example.com",
                                    "https://chat.example.com?x=1"])
def test_im_origins_bad_origin_fails(nginx_t, origin):
    failed(nginx_t("im_origins %s;" % origin), r"invalid origin")


def test_im_origins_one_bad_among_good_fails(nginx_t):
    failed(nginx_t("im_origins https://ok.example chat.example.com;"),
           r'invalid origin "chat\.example\.com"')


@pytest.mark.parametrize("origins", ["https://chat.example.com",
                                     "http://localhost:8080",
                                     "https://a.example https://b.example"])
def test_im_origins_good_origins_pass(nginx_t, origins):
    passed(nginx_t("im_origins %s;" % origins))


# --------------------------------------------------------------------------
# im_token_key

def test_im_token_key_missing_file_fails(nginx_t):
    failed(nginx_t("im_token_key /nonexistent;"), r'"/nonexistent" failed')


@pytest.mark.parametrize("content", [
    "garbage\n",
    "",
    "00" * 31 + "\n",                           # 31 bytes
    "00" * 33 + "\n",                           # 33 bytes
    "zz" * 32 + "\n",                           # not hex
    "01" + "00" * 31 + "\n",                    # a small-order point
    "k4.public.\n",
    "k4.public." + b64url(b"\x01" + b"\0" * 31) + "\n",
    "k4.secret." + b64url(os.urandom(64)) + "\n",
    "k3.public." + b64url(os.urandom(49)) + "\n",
    "x" * 5000,
], ids=["garbage", "empty", "short", "long", "not-hex", "small-order",
        "paserk-empty", "paserk-small-order", "paserk-secret", "paserk-k3",
        "big"])
def test_im_token_key_bad_key_file_fails(nginx_t, content):
    failed(nginx_t("im_token_key {dir}/bad.key;",
                   files={"bad.key": content}),
           r"(holds no Ed25519 public key|is not a public key file)")


@pytest.mark.parametrize("form", ["hex", "paserk"])
def test_im_token_key_good_key_file_passes(nginx_t, tmp_path, form):
    path = tmp_path / ("key." + form)
    write_key_file(path, form)
    passed(nginx_t("im_token_key %s;" % path))


def test_im_token_key_hex_without_newline_and_upper_case_passes(nginx_t):
    pub = ed25519_public(os.urandom(32))
    passed(nginx_t("im_token_key {dir}/a.key; im_token_key {dir}/b.key;",
                   files={"a.key": pub.hex(), "b.key": pub.hex().upper()}))


def test_im_token_key_relative_path_is_from_the_config_dir(nginx_t):
    passed(nginx_t("im_token_key k0.pub;", files=key_files(1)))


def test_im_needs_a_token_key(nginx_t):
    failed(nginx_t("", token_key=False), r"im_token_key")
