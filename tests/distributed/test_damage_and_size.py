"""A multi-rank journal meets damage and misuse between runs.

- Rank 1's newest snapshot has one bit flipped in a chunk only it uses: on the restart
  rank 1 cannot load it, so every rank moves to the next older snapshot they all hold,
  replays from there in lockstep, and the run still ends bit-identical.
- A journal created by 2 ranks, opened by 3: WorldSizeError on every rank, naming both
  sizes, before anything is written (every file's bytes are unchanged); 2 ranks then
  open it and finish as if nothing happened.
- A rank SIGKILLed inside the group's very first open, before its log exists: the
  restart opens the journal and trains to the same bytes (before 88c7f4e it refused the
  journal as if a rank's directory were lost).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from replay.ranks import layout
from snapshots.manifest import Manifest
from tests.chunkcopies import region

from .harness import Launcher
from .scenario import Scenario
from . import workload

pytestmark = [pytest.mark.crash, pytest.mark.fault_ranks, pytest.mark.timeout(90)]

STEPS = 14


def newest_snapshot_and_own_chunks(rank_root: Path) -> tuple[int, list]:
    """The newest snapshot's index in a rank's store, and where the chunks no older snapshot
    uses are (`tests.chunkcopies.Region`: a loose file, or a range of a pack)."""
    store = rank_root / "snapshots"
    names = sorted((p.name for p in (store / "manifests").iterdir() if "-" in p.name and not p.name.startswith(".")),
                   key=lambda n: tuple(map(int, n.split("-"))))
    decoded = {n: Manifest.decode(n, (store / "manifests" / n).read_bytes()) for n in names}
    older = {c.id for n in names[:-1] for c in decoded[n].chunks}
    own = [region(store, c.id) for c in decoded[names[-1]].chunks if c.id not in older]
    return int(names[-1].split("-")[0]), own


def test_one_ranks_damaged_newest_snapshot_moves_every_rank_to_the_older_common_one(tmp_path, references):
    with Scenario(tmp_path, 2, STEPS, keep_last=3, journal_options={"snapshot_on_close": False}) as scenario:
        assert scenario.run(steps=10).clean
        newest = [newest_snapshot_and_own_chunks(layout.rank_dir(scenario.root, rank)) for rank in range(2)]
        assert newest[0][0] == newest[1][0] and newest[1][1], f"no common newest snapshot to damage: {newest}"
        chunk = newest[1][1][0]
        chunk.flip(chunk.size // 2, 0x10)
        scenario.finish()
        counts = scenario.check(references.get(2, STEPS))
        reopened = [scenario.opens(rank)[-1] for rank in range(2)]
    assert reopened[1]["damaged"] >= 1, reopened  # rank 1 saw the damage ...
    for record in reopened:  # ... and every rank fell back together
        assert 0 < record["snapshot"] < newest[0][0], (newest[0][0], reopened)
    print(f"\nnewest {newest[0][0]} damaged on rank 1, recovered from {reopened[0]['snapshot']}: {counts}")


def tree(root: Path) -> dict[str, str]:
    """Every file's digest, except LMDB's lock.mdb: its reader table changes under any reader (a
    read-only look at the log, as join's check for entries is) and holds no data."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


def test_another_world_size_is_refused_on_every_rank_naming_both_and_changes_nothing(tmp_path, references):
    with Scenario(tmp_path, 2, STEPS) as scenario:
        assert scenario.run(steps=5).clean
        before = tree(scenario.root)
        with Launcher(3, tmp_path / "logs-3") as three:
            options = {**scenario.options, "generation": 99, "init": 99}
            gen = three.run(workload.train, (str(scenario.root), options), survivors_grace=30)
        for exit_ in gen.exits:
            assert exit_.exitcode == 1 and exit_.error == "WorldSizeError", gen.describe()
            assert "2" in exit_.message and "3" in exit_.message, exit_.message
        assert tree(scenario.root) == before
        scenario.finish()
        counts = scenario.check(references.get(2, STEPS))
    print(f"\n3 ranks refused ({gen.exits[0].message}); 2 ranks went on: {counts}")


def test_a_rank_killed_in_the_first_open_before_its_log_exists_does_not_block_the_restart(tmp_path, references):
    with Scenario(tmp_path, 2, STEPS) as scenario:
        assert scenario.run(steps=0).clean  # both ranks created the journal, no entry
        # What a SIGKILL of rank 0 after the group agreed on the directory but before it
        # opened its log leaves (seen with real kills 5-10 ms after the group joined).
        rank0 = layout.rank_dir(scenario.root, 0)
        for name in ("log", "snapshots", "environment.json"):
            path = rank0 / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        # Nothing was acknowledged, so the restart starts over from the state it is given
        # (here the reference's init: rank 1's initial snapshot is not common to both).
        gen = scenario.run(init=0)
        assert gen.clean, gen.describe()
        counts = scenario.check(references.get(2, STEPS))
        assert [scenario.opens(rank)[-1]["index"] for rank in range(2)] == [0, 0]
    print(f"\nrestart after a first open cut short on rank 0: {counts}")
