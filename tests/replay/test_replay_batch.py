"""Batched handlers (``@ops.op(replay_batch=fn)``): used on replay only, exact against the
sequential fold, and a failure inside a run ends as sequential replay ends. Also the
supervised recovery's heartbeat (``recovering k/n``) and the preflight's single pass."""

from __future__ import annotations

import os

import pytest
import torch

import replay
import snapshots
from eventlog import EventLog
from replay.errors import HandlerError, UnknownOpError
from replay.recovery import Replayer
from replay.supervisor import heartbeat, layout
from replay.testing import assert_replay_batch_exact, assert_states_equal

ROWS = 16


def make_state():
    return {"table": torch.zeros(ROWS)}


def set_row(state, *, row, value):
    state["table"][row] = value


def scale(state, *, factor):
    state["table"].mul_(factor)


def set_rows_batch(state, payloads):
    """Last write of each row wins, as applying them one by one."""
    last = {}
    for payload in payloads:
        last[payload["row"]] = payload["value"]
    state["table"][torch.tensor(list(last))] = torch.tensor(list(last.values()), dtype=torch.float32)


def make_ops(batch=set_rows_batch, handler=set_row):
    ops = replay.Ops()
    ops.op(handler, name="set_row", replay_batch=batch)
    ops.op(scale)
    return ops


def calls(n=60):
    out = []
    for i in range(n):
        if i % 25 == 24:
            out.append(("scale", {"factor": 0.5}))  # ends a run
        else:
            out.append(("set_row", {"row": (i * 7) % ROWS, "value": float(i) + 0.25}))
    return out


def fold(state, entries):
    ops = make_ops()
    for op, payload in entries:
        ops.spec(op).call(state, payload)
    return state


def write(path, entries, ops=None):
    journal = replay.Journal.open(path, state=make_state(), ops=ops or make_ops(), snapshot=replay.Every(),
                                  snapshot_on_close=False, progress=False)
    for op, payload in entries:
        journal.apply(op, **payload)
    journal.close()


def reopen(path, ops):
    state = make_state()
    journal = replay.Journal.open(path, state=state, ops=ops, snapshot=replay.Every(), snapshot_on_close=False,
                                  progress=False)
    report = journal.recovery
    journal.close()
    return state, report


@pytest.mark.timeout(60)
def test_replay_batch_is_used_on_recovery_only_and_gives_the_sequential_bytes(tmp_path):
    runs = []

    def counted(state, payloads):
        runs.append(len(payloads))
        set_rows_batch(state, payloads)

    entries = calls()
    write(tmp_path / "j", entries, make_ops(batch=counted))
    assert runs == [], "a live apply called the batched handler"
    state, report = reopen(tmp_path / "j", make_ops(batch=counted))
    assert report.entries_replayed == len(entries)
    assert runs and all(n >= 2 for n in runs) and sum(runs) == sum(op == "set_row" for op, _ in entries)
    assert_states_equal(state, fold(make_state(), entries))
    assert report.counts == {"set_row": sum(runs), "scale": len(entries) - sum(runs)}


@pytest.mark.timeout(60)
def test_a_replay_batch_that_raises_midway_is_replaced_by_sequential_replay(tmp_path):
    attempts = []

    def breaks_halfway(state, payloads):
        attempts.append(len(payloads))
        set_rows_batch(state, payloads[: len(payloads) // 2])  # a partial mutation first
        raise RuntimeError("planted failure")

    entries = calls()
    write(tmp_path / "j", entries)
    state, report = reopen(tmp_path / "j", make_ops(batch=breaks_halfway))
    assert attempts == [attempts[0]], "after the failure, replay must have gone sequential"
    assert report.entries_replayed == len(entries)
    assert_states_equal(state, fold(make_state(), entries))


@pytest.mark.timeout(60)
def test_a_handler_failure_inside_a_run_names_its_index_and_leaves_the_sequential_state(tmp_path):
    entries = calls(20)
    bad = 12  # log index (1-based) of a set_row entry in the middle of the first run
    assert entries[bad - 1][0] == "set_row"
    poison = entries[bad - 1][1]["value"]

    def strict(state, *, row, value):
        if value == poison:
            raise ValueError("refused")
        set_row(state, row=row, value=value)

    def strict_batch(state, payloads):
        for payload in payloads:
            strict(state, **payload)

    write(tmp_path / "j", entries)
    state = make_state()
    with pytest.raises(HandlerError) as caught:
        replay.Journal.open(tmp_path / "j", state=state, ops=make_ops(batch=strict_batch, handler=strict),
                            snapshot=replay.Every(), snapshot_on_close=False, progress=False)
    assert caught.value.index == bad and caught.value.op == "set_row"
    assert_states_equal(state, fold(make_state(), entries[: bad - 1]))


@pytest.mark.timeout(60)
def test_an_unknown_op_is_refused_before_the_term_is_bumped(tmp_path):
    entries = calls(30)
    write(tmp_path / "j", entries)
    with EventLog.open(tmp_path / "j" / "log", readonly=True) as log:
        term = log.term
    ops = replay.Ops()
    ops.op(set_row, replay_batch=set_rows_batch)  # "scale" (entry 25) is not registered
    with pytest.raises(UnknownOpError) as caught:
        replay.Journal.open(tmp_path / "j", state=make_state(), ops=ops, snapshot=replay.Every(), progress=False)
    assert caught.value.index == 25
    with EventLog.open(tmp_path / "j" / "log", readonly=True) as log:
        assert log.term == term, "the refused open bumped the term (invariant 7)"


@pytest.mark.timeout(60)
def test_recovery_resumes_after_the_preflight_and_a_changed_log_starts_again(tmp_path):
    """The writer's recovery replays nothing the preflight replayed; with a log that no
    longer holds that history it starts again from the snapshot."""
    entries = calls(40)
    write(tmp_path / "j", entries)
    applied = []

    def logged(state, *, row, value):
        applied.append(value)
        set_row(state, row=row, value=value)

    state, report = reopen(tmp_path / "j", make_ops(batch=None, handler=logged))
    assert len(applied) == sum(op == "set_row" for op, _ in entries), "an entry was applied twice"
    assert report.replayed == range(1, len(entries) + 1)
    # A preflight report whose history is not this log's: recover starts from the snapshot.
    replayer = Replayer(make_ops(), make_state())
    with EventLog.open(tmp_path / "j" / "log", readonly=True) as log:
        loaded = replayer.recover(log, None)
    loaded.through = (loaded.through[0], loaded.through[1] ^ 1)
    store = snapshots.SnapshotStore(tmp_path / "j" / "snapshots")
    try:
        with EventLog.open(tmp_path / "j" / "log", readonly=True) as log:
            again = replayer.recover(log, store, loaded=loaded)
    finally:
        store.close()
    assert again is not loaded and again.replayed == range(1, len(entries) + 1)
    assert_states_equal(replayer.state, fold(make_state(), entries))


def test_op_refuses_a_replay_batch_it_cannot_use():
    ops = replay.Ops()
    with pytest.raises(TypeError, match="replay_batch"):
        ops.op(set_row, replay_batch=42)
    with pytest.raises(ValueError, match="inputs"):
        ops.op(lambda state, *, row, inputs=None: None, name="with_inputs", inputs=lambda **p: None,
               replay_batch=set_rows_batch)
    assert "with_inputs" not in ops


def test_the_kit_checks_replay_batch_against_the_sequential_fold():
    assert_replay_batch_exact(make_state, make_ops(), calls(40))

    def first_write_wins(state, payloads):  # planted mismatch: the order of duplicate rows is reversed
        set_rows_batch(state, list(reversed(payloads)))

    with pytest.raises(AssertionError, match="table"):
        assert_replay_batch_exact(make_state, make_ops(batch=first_write_wins), calls(30))
    with pytest.raises(ValueError, match="replay_batch"):
        assert_replay_batch_exact(make_state, make_ops(batch=None), calls(10))


@pytest.mark.timeout(120)
def test_a_supervised_recovery_publishes_its_progress_in_the_heartbeat(tmp_path, monkeypatch):
    path = tmp_path / "j"
    n = 1500
    entries = [("set_row", {"row": i % ROWS, "value": float(i)}) for i in range(n)]
    write(path, entries)
    records = layout.records_dir(path)
    records.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv(layout.ENV_JOURNAL, str(path.resolve()))
    monkeypatch.setenv(layout.ENV_ATTEMPT, "1")
    beat_file = layout.heartbeat_path(records, 1, os.getpid())
    seen = []

    def watching(state, *, row, value):
        if int(value) % 100 == 0:  # the handler runs inside recovery: read what the supervisor would see
            beat = heartbeat.read(beat_file)
            seen.append((beat.phase, beat.done, beat.total))
        set_row(state, row=row, value=value)

    journal = replay.Journal.open(path, state=make_state(), ops=make_ops(batch=None, handler=watching),
                                  snapshot=replay.Every(), snapshot_on_close=False, progress=False)
    journal.close()
    assert {phase for phase, _, _ in seen} == {"recovering"}, seen
    assert {total for _, _, total in seen} == {n}
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and len(set(done)) >= 4 and done[-1] < n, done
