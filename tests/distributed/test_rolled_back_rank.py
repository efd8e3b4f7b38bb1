"""A rank's directory goes back in time, or loses its log: every rank refuses, naming it, and changes nothing.

Issue 19, item 2: two ranks, every step flushed (acknowledged); rank 1's directory is
then replaced by its own copy from an earlier index and the group reopened. Before the
fix the cut was the minimum last index alone: both ranks "recovered" at the copy's
index, rank 0 silently truncated acknowledged entries and deleted its newer snapshots;
with a copy older than rank 0's sealed (archived) history the snapshots were deleted
first and then the truncation failed, so every later open failed too. Now:

- a rank below the index the group acknowledged (each rank's acknowledged.json, rank 0's
  global records) is refused on every rank (RankBehindError naming rank 1, its index,
  the acknowledged index and the remedy); no log, snapshot, archive segment or record
  changes on any rank; putting the right directory back, the group trains on to the
  reference's bytes with every acknowledged entry;
- without any record of what was acknowledged (as a journal written before the
  records existed), a cut that would truncate into a rank's sealed history is refused
  the same way before anything is deleted;
- issue 19, item 8: a rank whose log is missing (its snapshots are there) refuses to
  start over, and the other rank's error quotes that reason and path, not gloo's
  "Connection reset by peer".

The normal crash cut (a rank ahead only by entries no flush returned) still converges:
tests/distributed/test_failpoints.py and test_kills.py.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import replay
from eventlog import EventLog
from replay.ranks import layout

from .scenario import Scenario

pytestmark = [pytest.mark.crash, pytest.mark.fault_ranks, pytest.mark.timeout(120)]

STEPS = 16


def files(root: Path) -> dict[str, str]:
    """Every file's digest but the log's LMDB and lock files (an open as writer rewrites its
    meta, and `entries` compares what they hold)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("data.mdb", "lock.mdb", "writer.lock")}


def entries(root: Path) -> list[list[tuple]]:
    """Each rank's readable entries as (index, term, op, payload)."""
    return [[(e.index, e.term, e.op, repr(e.payload)) for e in replay.entries(layout.rank_dir(root, rank))]
            for rank in range(2)]


def assert_unchanged(root: Path, before) -> None:
    now_files, now_entries = files(root), entries(root)
    changed = sorted(k for k in set(now_files) | set(before[0]) if now_files.get(k) != before[0].get(k))
    assert not changed, f"files changed, appeared or went away: {changed}"
    assert now_entries == before[1], "some rank's log changed"


def put_back(scenario: Scenario, copy: Path, aside: Path) -> None:
    """Replace rank 1's directory by `copy` (keeping the current one at `aside`)."""
    rank1 = layout.rank_dir(scenario.root, 1)
    rank1.rename(aside)
    shutil.copytree(copy, rank1, symlinks=True)


def sealed_through(rank_root: Path) -> int:
    with EventLog.open(rank_root / "log", readonly=True) as log:
        return log.live_first_index - 1


@pytest.mark.parametrize("copied_at", [14, 4])
def test_a_rank_put_back_from_an_older_copy_is_refused_on_every_rank_and_nothing_changes(
        tmp_path, references, copied_at):
    with Scenario(tmp_path, 2, STEPS, keep_last=2) as scenario:
        assert scenario.run(steps=copied_at).clean
        copy = tmp_path / "rank-1-copy"
        shutil.copytree(layout.rank_dir(scenario.root, 1), copy, symlinks=True)
        assert scenario.run().clean  # to STEPS: every step's flush returned, the last one STEPS
        acked = max(int(line.split()[1]) for line in (scenario.out / "acks-rank-0.txt").read_text().splitlines())
        assert acked == STEPS
        rank0 = layout.rank_dir(scenario.root, 0)
        # 14: rank 0 can truncate to it (the old code did so silently and deleted its snapshot at
        # 16); 4: rank 0 sealed entries past it (the old code deleted, then failed to truncate).
        assert (sealed_through(rank0) > copied_at) == (copied_at == 4), sealed_through(rank0)
        put_back(scenario, copy, tmp_path / "rank-1-current")
        before = (files(scenario.root), entries(scenario.root))

        gen = scenario.run(survivors_grace=30)

        for exit_ in gen.exits:
            assert exit_.exitcode == 1 and exit_.error == "RankBehindError", gen.describe()
            message = exit_.message
            assert f"rank 1's log ends at index {copied_at} ({layout.rank_dir(scenario.root, 1) / 'log'})" \
                in message, message
            assert f"below index {STEPS}, which the group acknowledged" in message, message
            assert str(rank0 / layout.ACK_FILE) in message and "Put back a copy of" in message, message
            assert "Nothing was changed on any rank" in message, message
        assert_unchanged(scenario.root, before)
        assert not [r for r in scenario.opens(0) if r["generation"] == gen.number]  # nobody recovered

        # The remedy: rank 1's own directory back; the group goes on with everything it acknowledged.
        shutil.rmtree(layout.rank_dir(scenario.root, 1))
        (tmp_path / "rank-1-current").rename(layout.rank_dir(scenario.root, 1))
        scenario.finish()
        counts = scenario.check(references.get(2, STEPS))
        assert [scenario.opens(rank)[-1]["index"] for rank in range(2)] == [STEPS, STEPS]
    print(f"\nrank 1 put back from index {copied_at}: refused ({gen.exits[0].message[:160]}...); then {counts}")


def test_without_acknowledgement_records_a_cut_into_sealed_history_is_refused_before_anything_is_deleted(
        tmp_path, references):
    """A journal from before the acknowledged records (none on any rank, no global record):
    the cut alone decides, and truncating rank 0 into its archive is impossible; the old
    code deleted rank 0's snapshots above the cut first, then failed (SealedError) on
    every later open."""
    with Scenario(tmp_path, 2, STEPS, keep_last=2) as scenario:
        assert scenario.run(steps=4).clean
        copy = tmp_path / "rank-1-copy"
        shutil.copytree(layout.rank_dir(scenario.root, 1), copy, symlinks=True)
        assert scenario.run().clean
        put_back(scenario, copy, tmp_path / "rank-1-current")
        for rank in range(2):
            (layout.rank_dir(scenario.root, rank) / layout.ACK_FILE).unlink(missing_ok=True)
        shutil.rmtree(scenario.root / layout.GROUP_DIR)
        rank0 = layout.rank_dir(scenario.root, 0)
        sealed = sealed_through(rank0)
        assert sealed > 4, sealed
        before = (files(scenario.root), entries(scenario.root))

        gen = scenario.run(survivors_grace=30)

        for exit_ in gen.exits:
            assert exit_.exitcode == 1 and exit_.error == "RecoveryError", gen.describe()
            assert f"the cut is index 4, where rank 1's ({layout.rank_dir(scenario.root, 1) / 'log'}) log ends" \
                in exit_.message, exit_.message
            assert f"rank 0's entries through {sealed} are sealed in its archive ({rank0 / 'log'})" \
                in exit_.message, exit_.message
            assert "Nothing was changed on any rank" in exit_.message, exit_.message
        assert_unchanged(scenario.root, before)
        # The refusal is stable (not a half-done cut that fails differently next time).
        again = scenario.run(survivors_grace=30)
        assert [e.error for e in again.exits] == ["RecoveryError", "RecoveryError"], again.describe()
        assert_unchanged(scenario.root, before)


def test_a_rank_whose_log_is_missing_is_refused_with_its_reason_on_every_rank(tmp_path):
    with Scenario(tmp_path, 2, STEPS) as scenario:
        assert scenario.run(steps=5).clean
        data = layout.rank_dir(scenario.root, 1) / "log" / "data.mdb"
        shutil.rmtree(data.parent)

        gen = scenario.run(survivors_grace=30)

        rank0, rank1 = gen.exits
        assert rank1.exitcode == 1 and rank1.error == "RecoveryError", gen.describe()
        assert rank0.exitcode == 1 and rank0.error == "RankFailureError", gen.describe()
        for exit_ in gen.exits:
            assert f"holds snapshots but its log {data} is missing" in exit_.message, gen.describe()
        assert "rank 1: RecoveryError" in rank0.message and "Connection reset" not in rank0.message, rank0.message
        assert not data.parent.exists()  # no rank started a new log over it


def test_a_rank_ahead_only_by_entries_no_flush_returned_is_still_cut_and_goes_on(tmp_path, references):
    """The ordinary crash cut beside the acknowledged records: a rank SIGKILLs itself right
    after an apply, before its flush (the other rank may hold that entry, never
    acknowledged); every restart recovers at or above what was acknowledged, never refuses,
    and the run ends bit-identical with every acknowledged entry."""
    with Scenario(tmp_path, 2, STEPS) as scenario:
        for rank, step in ((1, 5), (0, 9), (1, 12)):
            gen = scenario.run(die_at_step=step, die_rank=rank)
            assert gen.exits[rank].killed, gen.describe()
            assert not any(e.error == "RankBehindError" for e in gen.exits), gen.describe()
            recorded = [layout.read_acknowledged(layout.rank_dir(scenario.root, r)) for r in range(2)]
            assert max(recorded) >= step, recorded  # every step before `step` was acknowledged and recorded
        scenario.finish()
        counts = scenario.check(references.get(2, STEPS))
        opens = [r for r in scenario.opens(0) if r["generation"] > 0]
    assert len(opens) == 3 and all(r["cut"] is not None for r in opens), opens
    print(f"\nthree kills before a flush, no refusal: {counts}")
