"""Row 2: crash at every sync point. strace kills the real interpreter (sys.executable) at
its Nth fdatasync / fsync / rename / pwrite64, for N = 1, 2, ... until a run gets through
untouched (so every call of the run was a crash point), and the checker runs after each.

strace counts `when=N` per thread, not per process: a run "gets through" once no
thread makes N such calls. The log's fdatasync/pwrite64 run on one thread (the group
flusher), so those sweeps reach every call; the snapshot store's fsync/rename are spread
over its worker threads, so N=1 kills at the first such call of any thread and later N
reach the commit thread's manifest and directory syncs. The points between individual
chunk writes are covered deterministically by row 7's failpoints and by
tests/snapshots/test_crash.py's every-I/O-call sweep.

Journal runs are forked from the test process with strace attached to them
(checker/traced.py: no torch import under strace), start from a copy of one base journal and
run two at a time; bare-log runs (forked and traced the same way) sweep every pwrite64 and
fdatasync of 10 sync appends.
"""

from __future__ import annotations

import shutil

import pytest

from .checker import Tally, check_journal, check_log, journal_writer, log_writer, recovered_in_fresh_process, run_forked
from .checker.traced import TracedChild

pytestmark = [pytest.mark.crash, pytest.mark.fault_syncpoint]

# The journal run: 6 ops on an existing journal with a snapshot every 2 entries, so the
# sweep crosses appends, group commits, two snapshot commits, prunes and compactions.
RUN = {"steps": 6, "snapshot_every": 2, "flush_every": 1}


@pytest.fixture(scope="module")
def base_journal(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("syncpoints") / "base")
    run = run_forked(journal_writer, base, steps=6, snapshot_every=2)
    assert run.done, run.stderr_tail()
    return base, run.acks


@pytest.mark.parametrize("syscall, stride", [("fsync", 1), ("rename", 1), ("fdatasync", 1), ("pwrite64", 3)])
def test_journal_killed_at_every_sync_point(strace, tmp_path, base_journal, syscall, stride):
    base, base_acks = base_journal
    tally = Tally(f"2 journal kill at {syscall}")
    n, completed, killed = 1, False, 0
    while not completed:
        assert n < 80, f"{syscall}: the run never completed"
        batch = []
        for when in (n, n + stride):  # two children at once: one per core
            root = str(tmp_path / f"{syscall}-{when}")
            shutil.copytree(base, root)
            batch.append((root, TracedChild(journal_writer, root, strace=strace,
                                            inject=f"{syscall}:signal=KILL:when={when}", **RUN)))
        for root, child in batch:
            run = child.finish()
            tally.runs += 1
            completed |= run.done
            killed += not run.done
            assert run.done or (run.status != 0 and not run.errors), (run.status, run.errors, run.stderr_tail())
            check_journal(recovered_in_fresh_process(root), base_acks + run.acks, tally)
        n += 2 * stride
    tally.report()
    assert killed >= 1, f"{syscall}: no call was killed"


@pytest.mark.parametrize("syscall", ["pwrite64", "fdatasync"])
def test_bare_log_killed_at_every_sync_point(strace, tmp_path, syscall):
    path = str(tmp_path / "log")
    tally = Tally(f"2 eventlog kill at {syscall}")
    acks, n = [], 1
    while True:
        run = TracedChild(log_writer, path, "sync", strace=strace, inject=f"{syscall}:signal=KILL:when={n}",
                          count=10).finish()
        tally.runs += 1
        acks += run.acks
        check_log(path, acks, tally)
        if run.done:
            break
        assert run.status != 0 and not run.errors, (run.status, run.errors)
        n += 1
        assert n < 200
    tally.report()
    assert n > 5
