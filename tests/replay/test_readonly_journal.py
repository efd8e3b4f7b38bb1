"""Issue 19, item 6: a journal the user can only read (a pretrained run on a read-only
mount, or owned by another user) can be read: `replay.load_state`, `replay.entries`,
`replay.verify_journal` and `replay verify DIR` work without write access to anything.

As root (which ignores file modes) the reads run in a child process that drops to
uid/gid 65534 (nobody) after importing what it needs (the interpreter may live under
/root, which nobody cannot read): the journal's files are world-readable and owned by
root, so nobody can create nothing there -- no ``lock.mdb`` for a log that never had
one, no ``snapshots/READERS``, nothing in a directory. Before dropping, the child runs
the same calls on a copy, so every module they import lazily is loaded while it still
can be. As any other user, the journal is made read-only (``chmod -R a-w``) instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import replay

from .harness import open_journal
from .models import make_ops, make_state

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
import replay, replay.__main__
from tests.replay.models import make_ops, make_state

journal, warm, mid = sys.argv[2], sys.argv[3], int(sys.argv[4])


def calls(path):
    out = {}
    def attempt(name, fn):
        try:
            out[name] = ["ok", fn()]
        except BaseException as exc:
            out[name] = ["error", f"{type(exc).__name__}: {exc}"]
    ops = make_ops()

    def load_newest():
        into = make_state(seed=3)
        loaded = replay.load_state(path, {"model": into["model"]})
        return [loaded.index, [round(float(p.sum()), 6) for p in into["model"].parameters()]]

    def load_replayed():
        into = make_state(seed=4)
        loaded = replay.load_state(path, {"model": into["model"]}, at=mid, ops=ops, state=make_state)
        return [loaded.index, len(loaded.replayed), [round(float(p.sum()), 6) for p in into["model"].parameters()]]

    attempt("load_state", load_newest)
    attempt("load_state_replaying", load_replayed)
    attempt("entries", lambda: [[e.index, e.op] for e in replay.entries(path)])
    attempt("verify_journal", lambda: [replay.verify_journal(path).ok])
    attempt("cli_verify", lambda: [replay.__main__.main(["verify", path])])
    return out


as_root = calls(warm)
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
print("RESULT " + json.dumps({"root": as_root, "nobody": calls(journal)}), flush=True)
"""


@pytest.fixture(params=["no lock files", "the writer's lock files"])
def readonly_journal(request):
    """A journal (archive segments, several snapshots) owned by root, world-readable, in a
    directory nobody can reach but not write; and a copy of it for the child's warm-up."""
    base = Path(tempfile.mkdtemp(prefix="readonly-journal-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        path = base / "run"
        state, ops = make_state(), make_ops()
        with open_journal(path, state, ops, snapshot=replay.Every(entries=10), keep_last=3,
                          async_snapshots=False) as journal:
            for s in range(25):
                journal.apply("train_step", ids=state["data"].peek(4), seed=s)
                journal.apply("add", row=s % 4, value=0.5)
            assert journal.log.first_index == 1 and journal.log.live_first_index > 11  # history is archived
            last = journal.index
        if request.param == "no lock files":  # e.g. a run copied without them to a read-only mount
            for leftover in ("log/lock.mdb", "snapshots/READERS"):
                (path / leftover).unlink(missing_ok=True)
        else:  # another user's run: its writer's lock files are there, readable, not writable
            assert (path / "log" / "lock.mdb").exists()
            (path / "snapshots" / "READERS").touch()
        warm = base / "warm"
        shutil.copytree(path, warm)
        # root: owned by root, readable by all, writable by none but root (the child drops
        # to nobody); anyone else: writable by nobody at all
        _modes(path, 0o755, 0o644) if os.geteuid() == 0 else _modes(path, 0o555, 0o444)
        yield path, warm, last
    finally:
        if (base / "run").exists():
            _modes(base / "run", 0o755, 0o644)
        shutil.rmtree(base, ignore_errors=True)


def _modes(root: Path, directories: int, files: int) -> None:
    for directory, _, names in os.walk(root, topdown=False):
        for name in names:
            os.chmod(os.path.join(directory, name), files)
        os.chmod(directory, directories)


@pytest.mark.timeout(180)
def test_a_journal_the_user_can_only_read_is_read_by_every_reader(readonly_journal):
    path, warm, last = readonly_journal
    mid = 13  # no snapshot there, in the archive: load_state replays from an older one
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), str(warm), str(mid)],
                          capture_output=True, timeout=170, cwd="/")
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr.decode()[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    assert all(status == "ok" for status, _ in results["root"].values()), results["root"]
    failed = {name: value for name, (status, value) in results["nobody"].items() if status != "ok"}
    assert not failed, failed
    assert results["nobody"] == results["root"]  # the same answers as a reader who may write
    assert results["nobody"]["load_state"][1][0] == last
    index, replayed, _ = results["nobody"]["load_state_replaying"][1]
    assert index == mid and replayed > 0  # through the archive: LMDB starts after the newest snapshot
    assert results["nobody"]["cli_verify"][1] == [0]
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before, "a reader created files"
