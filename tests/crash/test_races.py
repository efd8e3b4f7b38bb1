"""Row 10: races between the training thread, the group flusher and the snapshot follow-up.

A rollback (a handler that raises) truncates the log while a snapshot's follow-up thread
may be pruning or compacting, and while the group flusher may be committing the doomed
entry. None of that may hang, fail a snapshot spuriously, or leave a doomed entry durable.
Each test carries a hard timeout (pytest-timeout dumps every thread's stack on expiry),
so a deadlock fails fast instead of eating CI's budget.
"""

from __future__ import annotations

import random
import sys
import threading
import warnings

import pytest

import replay

from tests.crash.checker.tracing import injecting
from tests.replay.models import assert_same, make_ops, make_state

pytestmark = [pytest.mark.crash, pytest.mark.fault_race]

OPS = make_ops()


def _burn(stop: threading.Event) -> None:
    """CPU contention: a thread that competes for the GIL the whole time."""
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


def _run_one(root, seed: int, applies: int) -> None:
    rng = random.Random(seed)
    state, reference = make_state(seed=0), make_state(seed=0)
    with warnings.catch_warnings():
        # A snapshot failure under a concurrent rollback is exactly the bug: fail on it.
        warnings.simplefilter("error", RuntimeWarning)
        journal = replay.Journal.open(root, state=state, ops=OPS, snapshot=replay.Every(entries=2),
                                      durability="group", keep_last=2)
        try:
            for _ in range(applies):
                if rng.random() < 0.3:
                    with pytest.raises(RuntimeError, match="boom"):
                        journal.apply("boom", row=rng.randrange(4))
                else:
                    row, value = rng.randrange(4), float(rng.randrange(-100, 100))
                    journal.apply("add", row=row, value=value)
                    OPS.spec("add").handler(reference, row=row, value=value)
                assert journal.last_snapshot_error is None, journal.last_snapshot_error
            assert_same(state, reference)
        finally:
            journal.close()
    # Every entry in the log is a real one: no doomed entry survived, none was lost.
    fresh = make_state(seed=3)
    with replay.Journal.open(root, state=fresh, ops=OPS, durability="group") as reopened:
        assert reopened.index == journal.index
    assert_same(fresh, reference)


@pytest.mark.timeout(240)
def test_rollback_beside_snapshot_follow_up_never_hangs_or_fails_a_snapshot(tmp_path):
    """Issue 10 item 1: many journals, failing handlers, a snapshot every 2 entries, a tiny
    switch interval and a GIL-burning thread, so the rollback and the follow-up interleave."""
    stop = threading.Event()
    burner = threading.Thread(target=_burn, args=(stop,), daemon=True)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    burner.start()
    try:
        for seed in range(int(__import__("os").environ.get("RACE_JOURNALS", "8"))):
            _run_one(tmp_path / f"j{seed}", seed, applies=150)
    finally:
        stop.set()
        burner.join()
        sys.setswitchinterval(old_interval)


# --- the log's side of a rollback: waiting for, flushing and committing removed entries ---

from eventlog import EventLog, FormatError, TruncatedError  # noqa: E402


@pytest.mark.timeout(60)
def test_a_waiter_on_a_truncated_entry_is_told_instead_of_hanging(tmp_path):
    """Item 1: wait_durable(N) for an entry that truncate_after removes ends with TruncatedError."""
    with EventLog.open(tmp_path / "log", durability="group", group_window=30.0) as log:
        log.append("kept", 1)
        log.flush()
        # No flusher from here on, so the doomed entry stays uncommitted however the
        # threads are scheduled: the waiter is still waiting when the entry goes.
        log._writer._background.stop()
        doomed = log.append("doomed", 2)
        outcome = []
        waiter = threading.Thread(target=lambda: outcome.append(_wait(log, doomed)))
        waiter.start()
        while not log._writer.tail.blocked:
            threading.Event().wait(0.001)
        log.truncate_after(doomed - 1)
        waiter.join(10)
        assert not waiter.is_alive(), "wait_durable still waits for an entry that no longer exists"
        assert isinstance(outcome[0], TruncatedError) and outcome[0].index == doomed
        assert log.flush() == doomed - 1
    # The index is reused by a new entry, which is durable like any other.
    with EventLog.open(tmp_path / "log", durability="group") as log:
        assert log.append("next", 3) == doomed and log.flush() == doomed
        assert [e.op for e in log.entries()] == ["kept", "next"]


def _wait(log, index):
    try:
        log.wait_durable(index)
    except Exception as exc:  # the outcome is the assertion
        return exc
    return None


@pytest.mark.timeout(60)
def test_flush_beside_truncation_returns_once_the_remaining_log_is_durable(tmp_path):
    with EventLog.open(tmp_path / "log", durability="group", group_window=30.0) as log:
        for i in range(5):
            log.append("e", i)
        with log._writer.committing:
            flusher = threading.Thread(target=log.flush)
            flusher.start()
            while not log._writer.tail.blocked:
                threading.Event().wait(0.001)
        log.truncate_after(2)
        flusher.join(10)
        assert not flusher.is_alive()
        assert log.durable_index == log.last_index == 2


_ROLLBACK_CHILD = r"""
import sys
from eventlog import EventLog
log = EventLog.open(sys.argv[1], durability="group", group_window=0.0)
for i in range(3):
    log.append("kept", i)
log.flush()
doomed = log.append("doomed", 99)
log.truncate_after(doomed - 1)
log.append("after", 4)
log.close()
print("done")
"""


@pytest.mark.timeout(120)
def test_group_rollback_never_makes_the_doomed_entry_durable(strace, tmp_path):
    """Item 2: kill the writer at each of its fdatasyncs (strace); entry 4 ("doomed")
    must never be found in the log afterwards, and the acknowledged prefix always is."""
    import subprocess

    killed_at = []
    for when in range(1, 20):
        path = tmp_path / f"log{when}"
        run = subprocess.run([*injecting(strace, f"fdatasync:signal=KILL:when={when}"),
                              sys.executable, "-c", _ROLLBACK_CHILD, str(path)],
                             capture_output=True, text=True, timeout=60)
        try:
            with EventLog.open(path, readonly=True) as log:
                ops = [e.op for e in log.entries()]
        except FormatError:  # killed while creating the log: nothing was acknowledged yet
            killed_at.append(when)
            continue
        assert "doomed" not in ops, f"killed at fdatasync {when}: the rolled-back entry is durable: {ops}"
        if "done" in run.stdout:
            assert ops == ["kept"] * 3 + ["after"]
            break
        killed_at.append(when)
        if len(ops) >= 3:
            assert ops[:3] == ["kept"] * 3
    else:
        raise AssertionError("the child never completed")
    assert killed_at, "no fdatasync was killed"
