"""The library side of the audit: verify_journal and state_at, without the CLI."""

from __future__ import annotations

import replay

from .harness import damage_snapshot, open_journal
from .models import assert_same, make_ops, make_state


def _write(path, entries=12, archive=None):
    state, ops = make_state(), make_ops()
    states = {}
    with open_journal(path, state, ops, snapshot=replay.Every(entries=5), keep_last=2, archive=archive,
                      async_snapshots=False, snapshot_on_close=False) as journal:  # only the policy's snapshots
        for i in range(entries):
            journal.apply("add", row=i % 4, value=float(i))
            states[journal.index] = {k: v.clone() if hasattr(v, "clone") else v for k, v in state.items()
                                     if k in ("table",)}
        infos = journal.snapshots.list()
        first = journal.log.first_index
    return ops, states, infos, first


def test_verify_journal_reports_a_sound_journal_and_names_a_damaged_snapshot(tmp_path):
    _, _, infos, first = _write(tmp_path)
    assert first > 1 and [i.index for i in infos] == [5, 10]
    report = replay.verify_journal(tmp_path, progress=False)
    assert report.ok and "sound" in str(report)
    assert [f.record["check"] for f in report.findings].count("snapshot") == len(infos)
    damage_snapshot(tmp_path, infos[-1])
    damaged = replay.verify_journal(tmp_path, progress=False)
    assert not damaged.ok
    assert [f.record["id"] for f in damaged.damage] == [infos[-1].manifest_id]


def test_verify_journal_says_when_no_sound_snapshot_covers_the_compaction_boundary(tmp_path):
    _, _, infos, first = _write(tmp_path)
    for info in infos:
        damage_snapshot(tmp_path, info)
    report = replay.verify_journal(tmp_path, progress=False)
    checks = [f.record["check"] for f in report.damage]
    assert checks == ["snapshot", "snapshot", "recoverable"]


def test_state_at_rebuilds_between_snapshots_from_the_newest_one_at_or_before(tmp_path):
    ops, states, infos, _ = _write(tmp_path)
    fresh = make_state(seed=9)
    report = replay.state_at(tmp_path, ops, fresh, 8)
    assert report.snapshot_index == 5 and report.replayed == range(6, 9)
    assert_same({"table": fresh["table"]}, states[8])
    assert report.damaged_snapshots == []  # the snapshot at 10 is passed over, not called damaged


def test_an_archived_journal_verifies_sound_names_both_boundaries_and_state_at_reads_archived_entries(tmp_path):
    import eventlog

    ops, states, infos, first = _write(tmp_path, archive=eventlog.Archive())
    # LMDB was compacted through 10, nothing deleted; retention keeps the initial snapshot,
    # the base of the whole archived history
    assert first == 1 and [i.index for i in infos] == [0, 5, 10]
    report = replay.verify_journal(tmp_path, progress=False)
    assert report.ok
    boundary = next(f for f in report.findings if f.record["check"] == "boundary")
    assert (boundary.record["compacted_through"], boundary.record["archived_through"]) == (0, 10)
    assert "none deleted" in boundary.lines[0] and "entries 1..10 archived" in boundary.lines[0]
    fresh = make_state(seed=9)
    at = replay.state_at(tmp_path, ops, fresh, 3)  # entries 1..3 live only in the archive now
    assert at.snapshot_index == 0 and at.replayed == range(1, 4)
    assert_same({"table": fresh["table"]}, states[3])
