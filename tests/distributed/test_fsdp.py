"""The stretch goal: FSDP2 (`fully_shard`) on CPU with gloo, sharded parameters and Adam state under a multi-rank journal.

FSDP2 runs on CPU with gloo in this torch (2.13): parameters and Adam's moments are
DTensors holding one shard per rank. The journal's state component is a `Shards`
adapter (workload.py) that hands the journal this rank's local shards and restores
them in place, so each rank snapshots only its shard. 2 ranks are SIGKILLed at random
moments and restarted; each rank's shards must end bit-identical to the same rank's in
an uninterrupted FSDP run, with every acknowledged entry kept.
"""

from __future__ import annotations

import os
import random

import pytest

from .harness import Kill
from .scenario import Scenario

pytestmark = [pytest.mark.crash, pytest.mark.fault_ranks, pytest.mark.timeout(150)]

STEPS, KILLS = 60, 5


def test_fsdp2_sharded_state_survives_random_sigkills_bit_identical(tmp_path, references):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    reference = references.get(2, STEPS, fsdp=True)
    with Scenario(tmp_path, 2, STEPS, fsdp=True) as scenario:
        # Two self-kills at random steps always land; timed kills land only while the run
        # lasts (a quiet machine finishes 60 FSDP steps in about a second).
        for step in sorted(rng.sample(range(2, STEPS - 2), 2)):
            scenario.run(die_at_step=step, die_rank=rng.randrange(2))
        while scenario.counts.kills < KILLS and scenario.counts.generations < 3 * KILLS:
            # An FSDP open takes ~0.7-0.9 s here (the first replayed step sets FSDP up).
            if scenario.run(kill=Kill(rng.randrange(2), rng.uniform(0.2, 1.5))).clean:
                break
        scenario.finish()
        counts = scenario.check(reference)
    print(f"\nFSDP2, 2 ranks, seed {seed}: {counts}")
    assert counts.kills >= 2, f"seed {seed}: too few kills landed: {counts}"
