"""Recovery beyond the invariants: damaged snapshots, poisoned logs, closed journals, reports."""

from __future__ import annotations

import pytest

import replay
from snapshots import StateMismatchError
from tests.chunkcopies import chunk_ids, region

from .harness import damage_snapshot, open_journal
from .models import assert_same, fingerprint, make_ops, make_state


def test_corrupt_newest_snapshot_falls_back_to_the_previous_and_replays_further(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=6), keep_last=3,
                      async_snapshots=False, snapshot_on_close=False) as journal:  # only the policy's snapshots
        for s in range(10):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
            journal.apply("add", row=s % 4, value=1.5)
        infos = journal.snapshots.list()
        last = journal.index
    newest, previous = infos[-1], infos[-2]
    assert newest.index > previous.index >= 1
    damage_snapshot(tmp_path, newest)
    again = make_state(seed=42)
    with open_journal(tmp_path, again, ops) as journal:
        report = journal.recovery
        assert report.snapshot_index == previous.index
        assert report.replayed == range(previous.index + 1, last + 1)
        assert [name for name, _ in report.damaged_snapshots] == [newest.manifest_id]
        assert "damaged" in str(report)
        assert_same(again, state)


def test_no_loadable_snapshot_after_a_deleting_compaction_is_a_recovery_error(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=3), keep_last=1, archive=None,
                      async_snapshots=False, snapshot_on_close=False) as journal:  # only the policy's snapshots
        for i in range(7):
            journal.apply("add", row=0, value=1.0)
        infos = journal.snapshots.list()
        assert journal.log.first_index > 1
    for info in infos:
        damage_snapshot(tmp_path, info)
    with pytest.raises(replay.RecoveryError, match="log starts at entry"):
        open_journal(tmp_path, make_state(), ops)


def test_poisoned_log_makes_the_journal_refuse_further_work(tmp_path):
    state, ops = make_state(), make_ops()
    journal = open_journal(tmp_path, state, ops, durability="group")
    journal.apply("add", row=0, value=1.0)
    journal.flush()
    # What the group flusher does when an fsync fails (eventlog's own fault tests inject
    # the EIO with strace; here only the journal's reaction is under test).
    journal.log._writer.poison(OSError(5, "Input/output error"))
    with pytest.raises(replay.JournalPoisonedError):
        journal.apply("add", row=0, value=1.0)
    for call in (lambda: journal.apply("add", row=0, value=1.0), journal.flush, journal.snapshot):
        with pytest.raises(replay.JournalPoisonedError, match="refuses further work"):
            call()
    journal.close()  # releases everything without raising anew
    again = make_state(seed=1)
    with open_journal(tmp_path, again, ops) as reopened:
        assert reopened.index == 1 and again["counters"]["total"] == 1


def test_closed_journal_refuses_work_and_close_is_idempotent(tmp_path):
    journal = open_journal(tmp_path, make_state(), make_ops())
    journal.close()
    journal.close()
    with pytest.raises(replay.ClosedError):
        journal.apply("add", row=0, value=1.0)


def test_new_journal_snapshots_its_initial_state_so_replay_does_not_depend_on_init(tmp_path):
    state, ops = make_state(seed=123), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), keep_log=True,
                      snapshot_on_close=False) as journal:  # recovery must replay the entries
        assert [i.index for i in journal.snapshots.list()] == [0]
        for s in range(3):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
    again = make_state(seed=999)  # a different random init must not matter
    with open_journal(tmp_path, again, ops) as journal:
        assert journal.recovery.snapshot_index == 0 and journal.recovery.entries_replayed == 3
        assert_same(again, state)


def test_wrong_state_layout_is_refused_before_anything_changes(tmp_path):
    ops = make_ops()
    with open_journal(tmp_path, make_state(), ops):
        pass
    other = make_state()
    del other["table"]
    before = fingerprint(other)
    with pytest.raises(StateMismatchError, match="do not match"):
        open_journal(tmp_path, other, ops)
    assert_same(other, before)


def test_opening_a_source_run_with_a_model_only_state_refuses_before_bumping_its_term(tmp_path):
    """Issue 12 section 5: fine-tuning from another run must not change that run. Opening it
    with only the model (a subset of its components) is refused by the preflight (invariant 7),
    against a readonly view: the term, the log and the snapshots stay as they were."""
    from eventlog import EventLog

    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops) as journal:
        for s in range(3):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
    with EventLog.open(tmp_path / "log", readonly=True) as log:
        term, last = log.term, log.last_index
    files = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*")
                   if p.is_file() and p.suffix != ".lock")
    model_only = {"model": make_state(seed=4)["model"]}
    before = fingerprint(model_only)
    with pytest.raises(StateMismatchError) as err:
        open_journal(tmp_path, model_only, ops)
    assert "optim" in str(err.value)
    with EventLog.open(tmp_path / "log", readonly=True) as log:
        assert (log.term, log.last_index) == (term, last)
    assert sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*")
                  if p.is_file() and p.suffix != ".lock") == files
    assert_same(model_only, before)


def test_state_must_be_a_mapping_of_components(tmp_path):
    with pytest.raises(TypeError):
        open_journal(tmp_path, {"x": object()}, make_ops())
    with pytest.raises(TypeError):
        open_journal(tmp_path, [1, 2], make_ops())


def test_close_with_snapshot_makes_the_next_open_replay_nothing(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every()) as journal:
        for i in range(5):
            journal.apply("add", row=i % 4, value=1.0)
        first = journal.snapshot(wait=True).result()
        assert journal.snapshot().result() == first  # nothing new to snapshot: the same type, done
        journal.apply("add", row=0, value=2.0)
        journal.close(snapshot=True)
    again = make_state(seed=4)
    with open_journal(tmp_path, again, ops) as journal:
        assert journal.recovery.snapshot_index == 6 and journal.recovery.entries_replayed == 0
        assert_same(again, state)


def test_payload_tensors_reach_handlers_on_the_state_device_live_and_in_replay(tmp_path):
    ops = make_ops()
    seen = []

    @ops.op
    def put(state, *, rows, values):
        seen.append((type(rows).__name__, values.device))
        state["table"][rows] = values

    import torch

    state = make_state()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), keep_log=True,
                      snapshot_on_close=False) as journal:  # recovery must replay the entry
        journal.apply("put", rows=[0, 2], values=torch.ones(2, 4))
    again = make_state()
    with open_journal(tmp_path, again, ops):
        assert_same(again, state)
    assert seen == [("list", state["table"].device)] * 2


def _chunk_files(root):
    """The ids of every chunk the journal's store holds, loose or packed."""
    return chunk_ids(root / "snapshots")


def test_damaged_newest_snapshot_after_lmdb_compaction_falls_back_to_an_older_one_through_the_archive(tmp_path):
    """With the (default) archive, LMDB is compacted through the newest snapshot; damage to
    one of that snapshot's chunks is passed over by loading the older snapshot and replaying
    the entries between them from the archive, to the same bytes."""
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), keep_last=3) as journal:
        for s in range(6):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
        older = journal.snapshot(wait=True).result()
        before = _chunk_files(tmp_path)
        for s in range(6, 12):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
            journal.apply("add", row=s % 4, value=0.5)
        newest = journal.snapshot(wait=True).result()
        for s in range(12, 14):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
        journal.flush()
        assert journal.log.live_first_index == newest.index + 1 and journal.log.first_index == 1
        last = journal.index
        journal.abandon()  # no closing snapshot: the newest stays the one at newest.index
    only_newest = sorted(_chunk_files(tmp_path) - before)
    assert only_newest and older.index < newest.index
    chunk = region(tmp_path / "snapshots", only_newest[0])  # its loose file, or its range in a pack
    chunk.flip(chunk.size // 2, 0x10)
    again = make_state(seed=77)
    with open_journal(tmp_path, again, ops, keep_last=3) as journal:
        report = journal.recovery
        assert report.snapshot_index == older.index
        assert [name for name, _ in report.damaged_snapshots] == [newest.manifest_id]
        assert report.replayed == range(older.index + 1, last + 1)  # older.index + 1 .. newest.index from the archive
        assert journal.count() == 20
    assert_same(again, state)
