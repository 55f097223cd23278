"""build/imcat against a real server: send to a user and to a group,
presence, history.  imcat is the command-line client of ./build.sh run;
these are the commands a person types there."""

import os
import subprocess

from imchat import cursor_key, login, redis_cmd, xrange_cursors, xrange_ids
from imgroup import make_group
from imtest import IM_BUILD, run

IMCAT = os.path.join(IM_BUILD, "imcat")


def imcat(n, user, *args, device="cli", timeout=30):
    """(exit status, stdout lines, stderr) of imcat as user."""
    p = subprocess.run(
        [IMCAT, "--url", n.url, "--token", n.token(user), "--device", device]
        + list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout.splitlines(), p.stderr


def test_send_to_a_user_and_to_a_group(nginx, redis):
    n = nginx()
    make_group(redis, "g1", "alice", "bob", "carol")
    rc, out, err = imcat(n, "alice", "send", "--to", "bob", "hi", "bob")
    assert rc == 0, err
    assert out == [xrange_ids(redis, "bob")[0]], out
    rc, out, err = imcat(n, "alice", "send", "--group", "g1", "hello all")
    assert rc == 0, err
    for user in ("bob", "carol"):
        assert out[0] == xrange_ids(redis, user)[-1], (user, out)
    # a group alice is not in: refused, exit status 1
    make_group(redis, "g2", "bob")
    rc, out, err = imcat(n, "alice", "send", "--group", "g2", "x")
    assert rc == 1 and "FORBIDDEN" in err, (rc, out, err)
    # exactly one of --to and --group
    for args in (["send", "x"], ["send", "--to", "bob", "--group", "g1",
                                 "x"]):
        rc, out, err = imcat(n, "alice", *args)
        assert rc == 2 and "--to USER or --group GROUP" in err, (rc, err)


def test_presence_of_users(nginx):
    n = nginx()

    async def go():
        bob = await login(n, "bob")
        rc, out, err = imcat(n, "alice", "presence", "bob", "carol")
        await bob.close()
        return rc, out, err

    rc, out, err = run(go())
    assert rc == 0, err
    assert sorted(out) == ["presence bob online", "presence carol offline"], \
        out
    rc, out, err = imcat(n, "alice", "presence")
    assert rc == 2 and "at least one USER" in err, (rc, err)


def test_history_pages_without_moving_the_cursor(nginx, redis):
    """30 messages to bob; `imcat history` prints all of them in inbox
    order, --count 5 the first five, --after the rest after one; bob's
    device cursor is not moved by any of it."""
    n = nginx()
    for i in range(30):
        rc, out, err = imcat(n, "alice", "send", "--to", "bob", "m%02d" % i)
        assert rc == 0, err
    ids = xrange_cursors(redis, "bob")
    rc, out, err = imcat(n, "bob", "history")
    assert rc == 0, err
    assert [line.split(" ", 1)[0] for line in out] == ids, out
    assert out[0].endswith("alice -> bob: m00"), out[0]
    rc, out, err = imcat(n, "bob", "history", "--count", "5")
    assert rc == 0, err
    assert [line.split(" ", 1)[0] for line in out] == ids[:5], out
    rc, out, err = imcat(n, "bob", "history", "--after", ids[9])
    assert rc == 0, err
    assert [line.split(" ", 1)[0] for line in out] == ids[10:], out
    assert redis_cmd(redis, "HGET", cursor_key("bob"), "cli") is None
