"""Row 7: REPLAY_FAILPOINTS crashes the writer at every named point of the snapshot commit,
prune, compaction and recovery; each recovers to the old snapshot plus the full log or the
new snapshot plus the log after it, checked by the shared checker."""

from __future__ import annotations

import shutil

import pytest

from replay import failpoints

from .checker import Tally, check_journal, journal_writer, recovered_in_fresh_process, run_forked

pytestmark = [pytest.mark.crash, pytest.mark.fault_failpoint]

# The group.* points belong to multi-rank journals: tests/distributed/test_failpoints.py kills at each;
# the fork.* points to replay.fork: tests/crash/test_fork.py kills at each.
WRITE_POINTS = [p for p in failpoints.POINTS if not p.startswith(("recovery.", "group.", "fork."))]
RECOVERY_POINTS = [p for p in failpoints.POINTS if p.startswith("recovery.")]


def _store_form(point: str) -> dict:
    """The chunk points are reached only by loose chunk files: the journal writes them
    with snapshot_packs=False (as journals before packs did); every other point with the
    default (packs)."""
    return {"snapshot_packs": False} if point.startswith("snapshot.before_chunk_") else {}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A journal with snapshots and a compacted log, then 5 entries no snapshot covers."""
    root = str(tmp_path_factory.mktemp("failpoints") / "base")
    first = run_forked(journal_writer, root, steps=10, snapshot_every=4)
    tail = run_forked(journal_writer, root, steps=5, snapshot_every=1000)
    assert first.done and tail.done, (first.stderr_tail(), tail.stderr_tail())
    return root, first.acks + tail.acks, tail.recovered["snapshot_index"]


def _check(root, acks, old_snapshot, tally):
    summary = recovered_in_fresh_process(root)
    check_journal(summary, acks, tally)
    # Old snapshot + the full log after it, or a newer snapshot + the suffix: never older.
    assert summary["snapshot_index"] >= old_snapshot, summary["snapshot_index"]
    assert summary["first_index"] <= summary["snapshot_index"] + 1
    return summary


@pytest.mark.parametrize("point", WRITE_POINTS)
def test_kill_at_write_failpoint(tmp_path, base, point):
    source, acks, old_snapshot = base
    root = str(tmp_path / "j")
    shutil.copytree(source, root)
    tally = Tally(f"7 failpoint {point}=kill")
    run = run_forked(journal_writer, root, steps=12, snapshot_every=3, env={failpoints.ENV: f"{point}=kill"},
                     **_store_form(point))
    assert run.killed and f"failpoint {point}: kill" in run.stderr.decode(), run.stderr_tail()
    tally.runs += 1
    _check(root, acks + run.acks, old_snapshot, tally)
    tally.report()


@pytest.mark.parametrize("point", RECOVERY_POINTS)
def test_kill_at_recovery_failpoint_then_recover_twice(tmp_path, base, point):
    source, acks, old_snapshot = base
    root = str(tmp_path / "j")
    shutil.copytree(source, root)
    tally = Tally(f"7 failpoint {point}=kill")
    run = run_forked(journal_writer, root, steps=3, env={failpoints.ENV: f"{point}=kill"})
    assert run.killed and run.recovered is None and f"failpoint {point}: kill" in run.stderr.decode()
    tally.runs += 1
    first = _check(root, acks, old_snapshot, tally)
    second = _check(root, acks, old_snapshot, tally)  # recovery is idempotent
    assert first["fingerprint"] == second["fingerprint"]
    tally.report()


@pytest.mark.parametrize("point", ["snapshot.before_pack_fsync", "snapshot.before_chunk_fsync",
                                   "snapshot.before_manifest_rename", "snapshot.prune.before_sweep"])
def test_raise_at_snapshot_failpoint_fails_the_snapshot_not_the_journal(tmp_path, base, point):
    source, acks, old_snapshot = base
    root = str(tmp_path / "j")
    shutil.copytree(source, root)
    run = run_forked(journal_writer, root, steps=8, snapshot_every=3, async_snapshots=False,
                     env={failpoints.ENV: f"{point}=raise"}, **_store_form(point))
    # A failing snapshot fails the snapshot, not the applies that triggered it (they are
    # applied and logged): the run completes, the journal reports the failure naming the
    # failpoint, and nothing acknowledged is lost.
    assert run.done and not run.errors, run.errors or run.stderr_tail()
    assert point in " ".join(" ".join(e) for e in run.snapshot_errors), run.snapshot_errors
    _check(root, acks + run.acks, old_snapshot, Tally("7 raise"))


def test_failpoint_spec_errors_are_clear():
    assert failpoints.parse("") == {}
    assert failpoints.parse("journal.before_compact=kill, recovery.mid_replay=raise") == {
        "journal.before_compact": "kill", "recovery.mid_replay": "raise"}
    with pytest.raises(ValueError, match="unknown failpoint 'nope'"):
        failpoints.parse("nope=kill")
    with pytest.raises(ValueError, match="not 'name=kill'"):
        failpoints.parse("journal.before_compact=explode")
