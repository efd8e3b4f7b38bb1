"""replay.fork SIGKILLed at each fork.* failpoint and at every write, fsync, rename, link,
mkdir and unlink it makes: NEWDIR is then either absent or a complete journal that opens to
the state at I, the source is unchanged byte for byte, and the next fork to NEWDIR
succeeds (it removes the killed fork's staging directory)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys

import pytest

import replay
from replay import failpoints
from replay.determinism import fingerprint
from tests.replay.models import assert_same, make_ops, make_state
from tests.replay.test_fork import run, tree_digest
from tests.crash.checker.children import kill_at_call
from tests.snapshots.forking import read_all

pytestmark = [pytest.mark.crash, pytest.mark.fault_failpoint, pytest.mark.fault_sigkill]

AT = 21
FORK_POINTS = [p for p in failpoints.POINTS if p.startswith("fork.")]
IO_CALLS = ("write", "fsync", "rename", "link", "mkdir", "unlink", "rmdir")
MAX_IO_KILLS = 40  # kill points spread evenly over the fork's calls (all of them when fewer)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(source journal, its tree digest, the fingerprint of an uninterrupted run's state at AT).
    The source: 30 entries, snapshots every 8, sealed through 24 (as tests/replay/test_fork.py)."""
    base = tmp_path_factory.mktemp("forkcrash")
    source = base / "src"
    run(source, 20)
    run(source, 10, start=20)
    ref = base / "reference"
    run(ref, AT, snapshot=replay.Every(entries=1000))
    state = make_state()
    with replay.Journal.open(ref, state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    return source, tree_digest(source), fingerprint(state)


def _fork_in_child(source, dest, env: dict, kill_at: int | None, count_fd: int | None):
    """Fork; the child runs replay.fork(source, at=AT, dest) with `env` set, SIGKILLing itself
    at its `kill_at`-th I/O call (None: never), and writes its call count to `count_fd` when
    done. Returns (pid, read end of the child's stderr)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(w, 2)
            sys.stderr = open(2, "w", closefd=False)  # pytest's capture is not fd 2: failpoints write here
            os.environ.update(env)
            calls = kill_at_call(IO_CALLS, kill_at)
            replay.fork(source, at=AT, dest=dest)
            if count_fd is not None:
                os.write(count_fd, struct.pack("<q", calls[0]))
            code = 0
        except BaseException:  # noqa: BLE001 - report and exit, never return into pytest
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def _check_after_kill(world, dest):
    """NEWDIR absent (then a fork now succeeds) or a complete journal; the source unchanged."""
    source, digest, expected = world
    assert tree_digest(source) == digest, "the fork changed its source"
    if dest.exists():
        state = make_state(seed=9)
        with replay.Journal.open(dest, state=state, ops=make_ops(), snapshot_on_close=False) as journal:
            assert journal.index == AT + 1
        assert_same(state, expected)
        outcome = "complete"
    else:
        outcome = "absent"
        replay.fork(source, at=AT, dest=dest)
        assert not (dest.parent / f".{dest.name}.forking").exists()
        state = make_state(seed=9)
        with replay.Journal.open(dest, state=state, ops=make_ops(), snapshot_on_close=False):
            pass
        assert_same(state, expected)
    shutil.rmtree(dest)
    return outcome


@pytest.mark.parametrize("point", FORK_POINTS)
def test_kill_at_each_fork_failpoint(world, tmp_path, point):
    dest = tmp_path / "new"
    pid, err = _fork_in_child(world[0], dest, {failpoints.ENV: f"{point}=kill"}, None, None)
    stderr = read_all(err).decode()
    status = _wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, stderr
    assert f"failpoint {point}: kill" in stderr
    outcome = _check_after_kill(world, dest)
    assert outcome == ("complete" if point == "fork.after_rename" else "absent")


def test_kill_at_every_io_call_of_a_fork(world, tmp_path):
    dest = tmp_path / "new"
    r, w = os.pipe()
    pid, err = _fork_in_child(world[0], dest, {}, None, w)
    os.close(w)
    stderr = read_all(err).decode()
    assert _wait(pid) == 0, stderr
    total = struct.unpack("<q", read_all(r))[0]
    shutil.rmtree(dest)
    assert total > 20, total
    points = sorted({1 + (total - 1) * k // (MAX_IO_KILLS - 1) for k in range(MAX_IO_KILLS)})
    outcomes = {"absent": 0, "complete": 0}
    for kill_at in points:
        pid, err = _fork_in_child(world[0], dest, {}, kill_at, None)
        stderr = read_all(err).decode()
        status = _wait(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill_at, stderr)
        outcomes[_check_after_kill(world, dest)] += 1
    assert outcomes["absent"] > 0 and outcomes["complete"] > 0, outcomes  # kills fell on both sides of the rename
    print(f"fork killed at {len(points)} of its {total} I/O calls: {outcomes}")
