"""journal.count(): user entries (never the engine's digests or truncation records),
overall and per op, through any number of crashes and resumes (replay/counting.py)."""

from __future__ import annotations

import random

import pytest
import torch

import replay
from replay import recovery, snapshotter

N = 40


def _state():
    return {"used": torch.zeros(N, dtype=torch.int64), "w": torch.zeros(2, dtype=torch.float64)}


def _ops():
    ops = replay.Ops()

    @ops.op
    def train(state, *, seed):
        state["used"][seed] += 1
        state["w"] += torch.tensor([seed, 1.0], dtype=torch.float64)
        return seed

    @ops.op
    def note(state, *, text):
        pass

    return ops


def _open(path, **options):
    options = {"snapshot": replay.Every(entries=7), "keep_last": 2, "digest_every": 3, **options}
    return replay.Journal.open(path, state=_state(), ops=_ops(), **options)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_range_count_runs_exactly_n_steps_over_kills_and_resumes_with_each_seed_once(tmp_path, seed):
    rng = random.Random(seed)
    applied = []
    opens = 0
    while True:
        journal = _open(tmp_path)
        opens += 1
        start = journal.count()
        assert start == journal.count("train") == len(applied)
        if start == N:
            break
        stop = rng.randint(start + 1, N) if opens < 6 else N
        for step in range(journal.count(), N):
            applied.append(journal.apply("train", seed=step))
            if step + 1 == stop:
                break
        journal.flush()
        journal.abandon()  # a kill after the flush: every applied entry is durable
    try:
        assert applied == list(range(N))  # exactly N user steps, seeds 0..N-1 once each
        assert journal.state["used"].tolist() == [1] * N
        assert journal.index > N  # the digest entries: range(journal.index, N) would skip steps
        assert opens >= 3
    finally:
        journal.close()


def test_count_is_per_op_and_ignores_engine_entries_and_dropped_handlers(tmp_path):
    ops = _ops()

    @ops.op
    def fail(state):
        raise RuntimeError("no")

    with replay.Journal.open(tmp_path, state=_state(), ops=ops, digest_every=2,
                             snapshot_on_close=False) as journal:  # nothing compacted: truncate may drop entry 11
        assert journal.count() == 0 and journal.count("train") == 0 and journal.count("never") == 0
        for step in range(5):
            journal.apply("train", seed=step)
        journal.apply("note", text="hi")
        with pytest.raises(RuntimeError):
            journal.apply("fail")
        assert (journal.count(), journal.count("train"), journal.count("note"), journal.count("fail")) == (6, 5, 1, 0)
        assert journal.count("replay.digest") == 0 and journal.index == 11  # 6 user entries, 5 digests
    # Drop the digest after 'note' (a replay.truncate record takes its index), then recount from the log.
    for name in (tmp_path / "snapshots" / "manifests").iterdir():
        if name.name != "0-0":  # the initial state stays: replay starts from stored bytes, never from _state()
            name.unlink()
    replay.truncate(tmp_path, after=10, reason="test")
    with replay.Journal.open(tmp_path, state=_state(), ops=ops) as journal:
        assert journal.recovery.entries_replayed == 11 and journal.index == 11
        assert (journal.count(), journal.count("note")) == (6, 1)


@pytest.mark.parametrize("keep_log", [True, False])
def test_count_survives_recovery_from_a_snapshot_and_after_compaction(tmp_path, keep_log):
    with _open(tmp_path, keep_log=keep_log) as journal:
        for step in range(25):
            journal.apply("train", seed=step)
            if step % 4 == 0:
                journal.apply("note", text=str(step))
        journal.flush()
        journal.abandon()
    with _open(tmp_path, keep_log=keep_log) as journal:
        assert journal.recovery.snapshot_index > 0
        assert (journal.count(), journal.count("train"), journal.count("note")) == (32, 25, 7)
        assert journal.recovery.user_entries == 32 and journal.recovery.uncounted == 0


def test_snapshots_without_counts_are_recounted_from_the_log(tmp_path, monkeypatch):
    """A snapshot written before counts existed (format 1): counts are rebuilt from the log's headers."""
    monkeypatch.setattr(snapshotter, "snapshot_meta", lambda index, checksum, counts=None:
                        recovery.snapshot_meta(index, checksum))
    with _open(tmp_path, keep_log=True) as journal:
        for step in range(20):
            journal.apply("train", seed=step)
        journal.apply("note", text="x")
        journal.flush()
        journal.abandon()
    monkeypatch.undo()
    with _open(tmp_path, keep_log=True) as journal:
        assert "counts" not in journal.recovery.snapshot.meta["replay"]
        assert (journal.count(), journal.count("train"), journal.count("note")) == (21, 20, 1)


def test_entries_a_v1_compaction_deleted_under_a_countless_snapshot_count_overall_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshotter, "snapshot_meta", lambda index, checksum, counts=None:
                        recovery.snapshot_meta(index, checksum))
    with _open(tmp_path, digest_every=None, snapshot=replay.Every(entries=5), archive=None,
               async_snapshots=False) as journal:
        for step in range(12):
            journal.apply("train", seed=step)
        journal.flush()
        journal.abandon()
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match="predates step counts"):
        journal = _open(tmp_path, digest_every=None, archive=None)
    with journal:
        assert journal.recovery.uncounted > 0
        assert journal.count() == 12 and journal.count("train") == 12 - journal.recovery.uncounted
