"""The rules `replay stats` and `replay prune` print and apply live in libraries
(replay/estimate.py, replay/retention.py, replay/replica/head.py); each is tested here
on real logs and stores, so the CLI and the journal cannot drift apart."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import snapshots
from eventlog import Archive, EventLog
from replay.estimate import WriterPace, estimate_replay, recovery_snapshot
from replay.recovery import snapshot_meta
from replay.replica.head import (ANOTHER, CLAIMED, RECORD_FILE, THIS, Head, Record, ownership, read_record,
                                 recorded_url)
from replay.retention import keep_oldest_snapshot


def _log(path, entries: int, **kw) -> EventLog:
    log = EventLog.open(path, durability="sync", **kw)
    for i in range(entries):
        log.append("step", {"i": i})
    return log


def _save(store, log, index: int, *, term: int | None = None, checksum: int | None = None):
    meta = snapshot_meta(index, log.checksum_at(index) if checksum is None else checksum)
    return store.save({"w": torch.full((4,), float(index))}, index=index,
                      term=log.term_at(index) if term is None else term, meta=meta)


# ----------------------------------------------------------------- the replay estimate


def test_the_estimate_starts_where_recovery_would_passing_over_another_historys_snapshot(tmp_path):
    log = _log(tmp_path / "log", 30)
    store = snapshots.SnapshotStore(tmp_path / "snapshots", keep_last=10)
    try:
        _save(store, log, 10)
        _save(store, log, 20, checksum=12345)  # recorded another log's checksum: a sibling run's snapshot
        start, passed = recovery_snapshot(log, store)
        assert start.index == 10
        assert [(p.manifest_id, p.damaged) for p in passed] == [("20-1", False)]
        assert "another history" in passed[0].reason
        estimate = estimate_replay(log, store, WriterPace())
        record = estimate.as_record()
        assert (record["from_index"], record["from_snapshot"], record["entries"]) == (10, "10-1", 20)
        assert record["foreign_snapshots"] == ["20-1"] and record["damaged_snapshots"] == []
        assert "passing over snapshot(s) of another history 20-1" in record["text"]
        assert record["seconds"] is None and "no timing" in record["text"]
    finally:
        store.close()
        log.close()


def test_the_estimate_names_a_damaged_snapshot_and_falls_back_to_the_start(tmp_path):
    log = _log(tmp_path / "log", 12)
    store = snapshots.SnapshotStore(tmp_path / "snapshots")
    try:
        info = _save(store, log, 8)
        (tmp_path / "snapshots" / "manifests" / info.manifest_id).write_bytes(b"garbage")
        estimate = estimate_replay(log, store, WriterPace())
        assert (estimate.from_index, estimate.from_snapshot, estimate.entries) == (0, None, 12)
        assert estimate.damaged_snapshots == [info.manifest_id]
        assert "(no snapshot verifies)" in estimate.text
        assert estimate_replay(log, None, WriterPace()).text.startswith("replay from the start of the log: 12")
    finally:
        store.close()
        log.close()


def test_the_writer_pace_is_the_median_gap_within_a_term():
    pace = WriterPace()
    for term, t in [(1, 0), (1, 10), (1, 30), (2, 10_000), (2, 10_010)]:
        pace.add(term, t * 1_000_000)
    assert pace.seconds_per_entry == pytest.approx(0.010)  # gaps 10, 20, 10 ms; the restart is no step
    pace.broken()
    pace.add(2, 99_999 * 1_000_000)  # after a damaged entry: no gap across it
    assert pace.seconds_per_entry == pytest.approx(0.010)
    assert WriterPace().seconds_per_entry is None


# ----------------------------------------------------------------- keep the oldest snapshot


def test_the_oldest_snapshot_is_kept_while_the_log_holds_every_entry_after_it(tmp_path):
    log = _log(tmp_path / "log", 20, archive=Archive())
    try:
        assert keep_oldest_snapshot(log, 0, compaction_deletes=False)
        assert keep_oldest_snapshot(log, 0)  # an offline tool: never compacted reads as history kept
        assert not keep_oldest_snapshot(log, None)
        assert not keep_oldest_snapshot(log, 0, compaction_deletes=True)  # would hold compaction back
        log.compact_through(15)  # archived: entries stay readable
        assert log.first_index == 1 and keep_oldest_snapshot(log, 0)
    finally:
        log.close()


def test_without_an_archive_compaction_deletes_and_the_oldest_may_go(tmp_path):
    log = _log(tmp_path / "log", 20, archive=None)
    try:
        log.compact_through(10)
        assert log.first_index == 11
        assert not keep_oldest_snapshot(log, 10)  # inferred: compacted away with no archive segment
        assert not keep_oldest_snapshot(log, 10, compaction_deletes=True)
        assert not keep_oldest_snapshot(log, 0, compaction_deletes=False)  # the log cannot replay from 0
        assert keep_oldest_snapshot(log, 10, compaction_deletes=False)
    finally:
        log.close()


# ----------------------------------------------------------------- the replica's ownership


def test_the_replica_record_url_and_ownership_rule(tmp_path):
    assert recorded_url(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="names no replica URL"):
        recorded_url(tmp_path)
    (tmp_path / RECORD_FILE).write_bytes(b"\xff not json")
    with pytest.raises(ValueError, match="is not a replica record"):
        recorded_url(tmp_path)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"format": 1, "url": "file:///r", "owner": "abc", "claim": "e1"}))
    assert recorded_url(tmp_path) == "file:///r"
    record = read_record(tmp_path, "file:///r")
    head = SimpleNamespace(owner="abc")
    assert ownership(record, head, "e9") == THIS
    assert ownership(record, Head(1, "zzz", 5, 0, 0.0), "e1") == CLAIMED
    assert ownership(record, Head(1, "zzz", 5, 0, 0.0), "e2") == ANOTHER
    assert ownership(Record("file:///r", None, None), Head(1, "zzz", 5, 0, 0.0), "e1") == ANOTHER


def test_replay_stats_prints_the_librarys_estimate_passing_over_another_history(tmp_path, capsys):
    """`replay stats` used to start its estimate from a sibling run's snapshot, which recovery skips."""
    from replay.__main__ import main

    log = _log(tmp_path / "j" / "log", 30)
    store = snapshots.SnapshotStore(tmp_path / "j" / "snapshots", keep_last=10)
    _save(store, log, 10)
    _save(store, log, 20, checksum=12345)
    store.close()
    log.close()
    capsys.readouterr()
    status = main(["stats", str(tmp_path / "j"), "--json"])
    out = capsys.readouterr().out
    (estimate,) = [r for r in map(json.loads, out.splitlines()) if r.get("section") == "estimate"]
    assert status == 0 and estimate["from_snapshot"] == "10-1" and estimate["foreign_snapshots"] == ["20-1"]
