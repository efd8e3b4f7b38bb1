"""A SIGKILL at each step of the multi-rank snapshot and recovery protocol, on one rank, recovers to a consistent cut.

For each failpoint (REPLAY_FAILPOINTS in one rank's environment only: the others run
on) a 2-rank DDP journal is crashed exactly there, then the whole group is restarted
until it trains to the end. The armed rank must have died at that point; every open
after it must agree on one index, cut and snapshot on every rank; the final state must
be bit-identical to the uninterrupted run on every rank, with every acknowledged entry
kept (Scenario.check).

Snapshot-side points fire at the first policy snapshot after a clean start; recovery
points fire in the restart after a rank died mid-training (entries above the newest
snapshot, so recovery has something to replay and, for the other ranks, to cut).
"""

from __future__ import annotations

import pytest

from .scenario import Scenario

pytestmark = [pytest.mark.crash, pytest.mark.fault_ranks, pytest.mark.timeout(90)]

STEPS = 14
SNAPSHOT = [
    "snapshot.before_pack_rename",
    "snapshot.before_manifest_rename",
    "snapshot.after_manifest_rename",
    "snapshot.prune.before_delete",
    "journal.before_compact",
    "journal.after_compact",
    "group.before_global_record",
]
RECOVERY = ["group.after_exchange", "group.after_cut_truncate", "recovery.after_snapshot_load", "recovery.mid_replay"]


@pytest.mark.parametrize("point", SNAPSHOT + RECOVERY)
def test_a_kill_at_each_protocol_step_recovers_to_a_consistent_cut(tmp_path, references, point):
    armed = 0 if point == "group.before_global_record" else 1  # only rank 0 writes the global record
    with Scenario(tmp_path, 2, STEPS) as scenario:
        # A journal that exists on every rank, with a snapshot at index 3 (the closing one).
        assert scenario.run(steps=3).clean
        if point in RECOVERY:
            # Rank 0 dies after step 6's apply (index 7, a snapshot at 4): rank 1 may hold
            # entries above the cut, and recovery has entries to replay.
            scenario.run(die_at_step=6, die_rank=0)
        crash = scenario.run(env={armed: {"REPLAY_FAILPOINTS": f"{point}=kill"}})
        assert crash.exits[armed].killed and scenario.fired(crash) == [point], crash.describe()
        scenario.finish()
        counts = scenario.check(references.get(2, STEPS))
        opens = [scenario.opens(rank) for rank in range(2)]
    after = [records[-1] for records in opens]
    assert after[0]["index"] == after[1]["index"] and after[0]["snapshot"] == after[1]["snapshot"], after
    print(f"\n{point} on rank {armed}: {counts}")


@pytest.mark.timeout(90)
def test_ddp_default_buckets_with_3_ranks_are_caught_by_the_digest_on_replay(tmp_path):
    """DDP's default buckets make a restarted 3-rank DDP sum in another order
    (test_ddp_baseline); replaying such a log must stop at the first digest with
    DivergenceError on every rank, not recover different bytes silently."""
    with Scenario(tmp_path, 3, STEPS, digest_every=1, ddp={}) as scenario:
        assert scenario.run(steps=3).clean
        scenario.run(die_at_step=8, die_rank=0)  # entries 4.. replay on the restart
        gen = scenario.run(survivors_grace=30)
    errors = {exit_.error for exit_ in gen.exits}
    assert errors == {"DivergenceError"}, gen.describe()
    print(f"\nrestart refused on every rank: {gen.exits[0].message[:160]}")
