"""close() leaves a snapshot at the last index by default (snapshot_on_close), so a run's
final state is a snapshot and the next open replays nothing; abandon() never snapshots."""

from __future__ import annotations

import pytest

import replay

from .harness import open_journal
from .models import assert_same, make_ops, make_state


def _indexes(journal):
    return [i.index for i in journal.snapshots.list()]


def _train(journal, state, steps):
    for s in range(steps):
        journal.apply("train_step", ids=state["data"].peek(4), seed=s)
        journal.apply("add", row=s % 4, value=1.0)


def test_close_snapshots_the_last_index_and_the_next_open_replays_nothing(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every()) as journal:
        _train(journal, state, 5)
        assert _indexes(journal) == [0]
        last = journal.index
    again = make_state(seed=5)
    with open_journal(tmp_path, again, ops) as journal:
        assert journal.recovery.snapshot_index == last == 10 and journal.recovery.entries_replayed == 0
        assert _indexes(journal) == [0, 10]
        assert_same(again, state)
    with open_journal(tmp_path, make_state(), ops) as journal:  # nothing applied: no new snapshot
        assert _indexes(journal) == [0, 10]


def test_close_skips_an_existing_snapshot_and_is_incremental(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every()) as journal:
        _train(journal, state, 3)
        taken = journal.snapshot(wait=True).result()
    with open_journal(tmp_path, make_state(), ops) as journal:
        assert [(i.index, i.created) for i in journal.snapshots.list()][-1] == (taken.index, taken.created)
        journal.apply("add", row=0, value=2.0)  # only the small table changes
    with open_journal(tmp_path, make_state(), ops) as journal:
        final = journal.snapshots.list()[-1]
        assert final.index == taken.index + 1 and journal.recovery.entries_replayed == 0
        assert final.bytes_written < final.bytes_logical  # unchanged chunks were not written again


def test_snapshot_on_close_false_and_close_snapshot_override(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), snapshot_on_close=False) as journal:
        _train(journal, state, 2)
    with open_journal(tmp_path, make_state(), ops, snapshot_on_close=False) as journal:
        assert journal.recovery.entries_replayed == 4 and _indexes(journal) == [0]
        journal.apply("add", row=1, value=1.0)
        journal.close(snapshot=True)  # the explicit argument wins over the option
    journal = open_journal(tmp_path, make_state(), ops)
    assert journal.recovery.entries_replayed == 0 and _indexes(journal) == [0, 5]
    journal.apply("add", row=1, value=1.0)
    journal.close(snapshot=False)
    with open_journal(tmp_path, make_state(), ops) as journal:
        assert journal.recovery.entries_replayed == 1 and _indexes(journal) == [0, 5]


def test_abandon_never_snapshots(tmp_path):
    state, ops = make_state(), make_ops()
    journal = open_journal(tmp_path, state, ops, snapshot=replay.Every())
    _train(journal, state, 2)
    journal.flush()
    journal.abandon()
    with open_journal(tmp_path, make_state(), ops, snapshot_on_close=False) as journal:
        assert _indexes(journal) == [0] and journal.recovery.entries_replayed == 4


def test_a_failing_closing_snapshot_is_reported_and_close_still_makes_every_entry_durable(tmp_path, monkeypatch):
    state, ops = make_state(), make_ops()
    journal = open_journal(tmp_path, state, ops, snapshot=replay.Every(), durability="group")
    _train(journal, state, 3)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.snapshots, "save", full)
    with pytest.warns(RuntimeWarning, match="snapshot at index 6 failed"):
        journal.close()
    assert isinstance(journal.last_snapshot_error, OSError)
    monkeypatch.undo()
    again = make_state(seed=2)
    with open_journal(tmp_path, again, ops) as reopened:
        assert reopened.recovery.entries_replayed == 6
        assert_same(again, state)
