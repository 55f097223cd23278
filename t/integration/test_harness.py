"""The harness itself: what other tests lean on must work as documented."""

import json
import os
import subprocess

import pytest

import imtest
from imtest import (RawClient, body, ed25519_public, ed25519_sign, frame,
                    nginx_test, paseto_v4_public, ws_accept)


def test_ed25519_rfc_8032_vector():
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc4"
                         "4449c5697b326919703bac031cae7f60")
    assert ed25519_public(seed).hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert ed25519_sign(seed, b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")


def test_paseto_v4_public_vectors():
    path = os.path.join(imtest.REPO, "t", "unit", "paseto-v4.json")
    if not os.path.exists(path):
        pytest.skip("no %s" % path)
    with open(path) as fp:
        tests = json.load(fp)["tests"]
    checked = 0
    for t in tests:
        if not t["name"].startswith("4-S-") or t["expect-fail"]:
            continue
        seed = bytes.fromhex(t["secret-key"])[:32]
        assert ed25519_public(seed).hex() == t["public-key"]
        assert paseto_v4_public(seed, t["payload"], t["footer"],
                                t["implicit-assertion"]) == t["token"]
        checked += 1
    assert checked


def test_rfc_6455_accept():
    assert ws_accept("dGhlIHNhbXBsZSBub25jZQ==") == \
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_redis_restart_keeps_port_and_data(redis):
    assert redis.cli("PING") == "PONG"
    redis.cli("SET", "k", "v")
    port = redis.port
    redis.stop()
    assert not redis.running
    with pytest.raises(subprocess.CalledProcessError):
        redis.cli("PING", timeout=5)
    redis.start()
    assert redis.port == port and redis.cli("GET", "k") == "v"
    redis.cli("SET", "k2", "v2")
    redis.stop(kill=True)
    redis.start()
    assert redis.cli("GET", "k") == "v"


def test_nginx_workers_and_reload(nginx):
    n = nginx("im_auth_timeout 60s;", workers=2)
    old = n.worker_pids()
    assert len(old) == 2 and n.pid not in old
    new = n.reload()
    assert len(new) == 2 and not set(new) & set(old)
    with RawClient(n.port) as c:
        c.upgrade()
        c.send_pb(frame(id=1, ping={"ts_ms": 1}))
        assert body(c.recv_pb()) == "pong"
    n.wait_log(r"\[notice\] .*reconfiguring")


def test_bad_log_lines_are_found(tmp_path, redis):
    n = imtest.Nginx(tmp_path / "n", redis.addr)
    n.start()
    n.stop()
    assert n.bad_log_lines() == []
    with open(n.log_path, "a") as fp:
        fp.write("2000/01/01 00:00:00 [crit] 1#1: made up\n")
    assert n.bad_log_lines() == ["2000/01/01 00:00:00 [crit] 1#1: made up"]


def test_nginx_t_reports_errors(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(imtest.nginx_conf(tmp_path, imtest.free_port(),
                                      server_directives="im_no_such_thing;"))
    ok, out = nginx_test(conf, tmp_path)
    assert not ok and "im_no_such_thing" in out
