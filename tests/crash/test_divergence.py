"""Row 13: the state recovery rebuilds is the state the live run had, or recovery refuses.

- the handler sees the same payload live and on replay (numpy scalars, reused buffers);
- a state whose layout differs from the snapshot's is refused, naming the path, and a
  refused open leaves the journal exactly as it was (term, entries, snapshots);
- a snapshot of another history (a sibling run, a restored backup) is skipped;
- a journal whose log vanished is reported, never re-initialised;
- a second thread inside a journal is refused instead of silently reordering the log.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch

import replay
from eventlog import EventLog
from snapshots import StateMismatchError

from tests.replay.models import assert_same, fingerprint, make_ops, make_state

pytestmark = [pytest.mark.crash, pytest.mark.fault_divergence]


def _ops():
    ops = make_ops()

    @ops.op
    def scale(state, *, factor):
        # Python arithmetic on the payload value: float32 live vs float64 on replay
        # would give different bits.
        state["counters"]["total"] = float(factor * 1.1 + state["counters"]["total"])

    @ops.op
    def keep(state, *, batch):
        state["counters"]["kept"] = batch  # the handler keeps the payload tensor
        state["table"][0] += batch.sum()

    return ops


def _journal_files(root):
    """What a refused open must leave unchanged: term, entries, snapshot files."""
    with EventLog.open(root / "log", readonly=True) as log:
        entries = [(e.index, e.term, e.checksum) for e in log.entries()]
        term = log.term
    files = sorted(str(p.relative_to(root)) for p in (root / "snapshots").rglob("*") if p.is_file())
    return term, entries, files


def test_live_handler_gets_the_payload_replay_will_give(tmp_path):
    ops = _ops()
    state = make_state()
    buffer = torch.zeros(4)
    with replay.Journal.open(tmp_path, state=state, ops=ops, snapshot=replay.Every(),
                             snapshot_on_close=False) as journal:  # the reopen must replay every entry
        for step in range(6):
            journal.apply("scale", factor=np.float32(0.1 * (step + 1)))
            buffer.fill_(step)  # the caller reuses its buffer for every step
            journal.apply("keep", batch=buffer)
            buffer.fill_(-1.0)  # ... and overwrites it after the apply
        assert isinstance(state["counters"]["total"], float)
        assert torch.equal(state["counters"]["kept"], torch.full((4,), 5.0)), "the kept payload aliases the caller's buffer"
        live = fingerprint(state)
    recovered = make_state(seed=9)
    with replay.Journal.open(tmp_path, state=recovered, ops=ops) as journal:
        assert journal.recovery.entries_replayed == 12
        assert_same(recovered, live)


def test_a_payload_that_cannot_be_logged_is_refused_naming_its_path(tmp_path):
    with replay.Journal.open(tmp_path, state=make_state(), ops=_ops()) as journal:
        with pytest.raises(TypeError, match=r"\['batch'\]"):
            journal.apply("keep", batch=object())
        assert journal.index == 0


def test_reopening_with_another_dtype_is_refused_and_changes_nothing(tmp_path):
    ops = _ops()
    state = make_state()
    state["model"].double()
    with replay.Journal.open(tmp_path, state=state, ops=ops) as journal:
        journal.apply("add", row=1, value=2.0)
        journal.snapshot(wait=True)
        journal.apply("add", row=2, value=3.0)
    before = _journal_files(tmp_path)
    other = make_state()
    other["model"].to(torch.bfloat16)
    untouched = fingerprint(other)
    with pytest.raises(StateMismatchError, match=r"\['model'\]\['0\.(bias|weight)'\].*bfloat16.*float64"):
        replay.Journal.open(tmp_path, state=other, ops=ops)
    assert_same(other, untouched)
    assert _journal_files(tmp_path) == before, "a refused open wrote to the journal"


def test_a_failed_open_does_not_bump_the_term(tmp_path):
    """Item 11: mismatched components, an unregistered op: refused before becoming the writer."""
    ops = _ops()
    with replay.Journal.open(tmp_path, state=make_state(), ops=ops,
                             snapshot_on_close=False) as journal:  # entry 1 stays to be replayed
        journal.apply("scale", factor=1.0)
    before = _journal_files(tmp_path)
    fewer = make_state()
    del fewer["table"]
    with pytest.raises(StateMismatchError):
        replay.Journal.open(tmp_path, state=fewer, ops=ops)
    with pytest.raises(replay.UnknownOpError, match="entry 1"):
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops())
    assert _journal_files(tmp_path) == before
    with replay.Journal.open(tmp_path, state=make_state(), ops=ops) as journal:
        assert journal.log.term == before[0] + 1


def test_a_snapshot_of_a_sibling_run_is_skipped(tmp_path):
    """Item 16: two runs from the same start share term 1; a snapshot copied from one into
    the other (a restored backup) must not be loaded into the other's history."""
    ops = _ops()
    runs = {}
    for name, value in (("a", 1.0), ("b", 100.0)):
        state = make_state()
        with replay.Journal.open(tmp_path / name, state=state, ops=ops, snapshot=replay.Every(),
                                 keep_log=True) as journal:
            for _ in range(4):
                journal.apply("add", row=0, value=value)
            journal.snapshot(wait=True)
            journal.apply("add", row=1, value=value)
            runs[name] = fingerprint(state)
    # Restore b's snapshot at index 4 over a's: same index, same term, other history.
    for sub in ("chunks", "packs", "manifests"):  # chunks are loose or packed: copy whichever b has
        if (tmp_path / "b" / "snapshots" / sub).exists():
            shutil.copytree(tmp_path / "b" / "snapshots" / sub, tmp_path / "a" / "snapshots" / sub, dirs_exist_ok=True)
    recovered = make_state(seed=5)
    with replay.Journal.open(tmp_path / "a", state=recovered, ops=ops) as journal:
        assert journal.recovery.snapshot_index == 0
        assert any("another history" in reason for _, reason in journal.recovery.damaged_snapshots)
    assert_same(recovered, runs["a"])


@pytest.mark.parametrize("damage", ["empty", "missing"])
def test_a_journal_whose_log_vanished_is_reported_not_reinitialised(tmp_path, damage):
    ops = _ops()
    with replay.Journal.open(tmp_path, state=make_state(), ops=ops) as journal:
        for _ in range(3):
            journal.apply("add", row=0, value=1.0)
        journal.snapshot(wait=True)
    data = tmp_path / "log" / "data.mdb"
    if damage == "empty":
        data.write_bytes(b"")
    else:
        data.unlink()
    with pytest.raises(replay.RecoveryError, match="holds snapshots but its log"):
        replay.Journal.open(tmp_path, state=make_state(), ops=ops)
    assert (not data.exists()) if damage == "missing" else data.stat().st_size == 0


@pytest.mark.timeout(60)
def test_a_second_thread_inside_a_journal_is_refused(tmp_path):
    """Item 6: overlapping applies from two threads would apply in another order than the log's."""
    ops = _ops()
    inside, release = threading.Event(), threading.Event()

    @ops.op
    def slow(state, *, row):
        inside.set()
        release.wait(30)
        state["table"][row] += 1

    state = make_state()
    with replay.Journal.open(tmp_path, state=state, ops=ops) as journal:
        worker = threading.Thread(target=journal.apply, args=("slow",), kwargs={"row": 0})
        worker.start()
        assert inside.wait(30)
        with pytest.raises(replay.ConcurrentUseError, match="one thread at a time"):
            journal.apply("add", row=1, value=1.0)
        with pytest.raises(replay.ConcurrentUseError):
            journal.flush()
        release.set()
        worker.join(30)
        assert journal.index == 1
        # Handing the journal over between calls is fine.
        handed = threading.Thread(target=journal.apply, args=("add",), kwargs={"row": 2, "value": 1.0})
        handed.start()
        handed.join(30)
        assert journal.index == 2
        live = fingerprint(state)
    recovered = make_state(seed=2)
    with replay.Journal.open(tmp_path, state=recovered, ops=ops):
        assert_same(recovered, live)
