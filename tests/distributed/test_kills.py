"""A real DDP job on 2 and 3 gloo ranks under a multi-rank journal, SIGKILLed and restarted like torchrun does.

Each generation one random rank is SIGKILLed: at a random moment after the group
joined (in training, in a snapshot, in recovery), or by a failpoint in that rank's
environment only (between the per-rank commits and the global record on rank 0, inside
the snapshot commit, in the middle of recovery's replay, after recovery's exchange, after
its truncation to the cut, around compaction); the launcher then terminates the others
and restarts the whole group from another random model init. After the kills a last
generation trains to the end. Its final state on every rank must be bit-identical to an
uninterrupted plain-DDP run and to the other ranks, every open must have agreed on one
index, and no acknowledged entry may be lost (Scenario.check).
"""

from __future__ import annotations

import os
import random

import pytest

from .harness import Kill
from .scenario import Scenario

pytestmark = [pytest.mark.crash, pytest.mark.fault_ranks]

# (failpoint, rank it is armed on: None = a random one)
POINTS = [
    ("group.before_global_record", 0),
    ("snapshot.before_manifest_rename", None),
    ("snapshot.after_manifest_rename", None),
    ("journal.before_compact", None),
    ("recovery.mid_replay", None),
    ("group.after_exchange", None),
    ("group.after_cut_truncate", None),
]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("world_size,kills,steps", [(2, 12, 80), (3, 9, 80)])
def test_random_sigkills_of_random_ranks_end_bit_identical(tmp_path, references, world_size, kills, steps):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    reference = references.get(world_size, steps)
    with Scenario(tmp_path, world_size, steps, digest_every=3) as scenario:
        # The first generation dies at a step, after the journal exists on every rank (a kill
        # inside the very first open restarts from another init: test_damage_and_size's case).
        scenario.run(die_at_step=rng.randrange(1, 8), die_rank=rng.randrange(world_size))
        missed = False
        while scenario.counts.kills < kills and scenario.counts.generations < 3 * kills:
            trained = scenario.trained()
            if trained >= steps:
                break  # the job is done: a kill missed the last steps
            victim = rng.randrange(world_size)
            # A generation trains at most a quarter of what is left (8 steps at least), then
            # closes cleanly: on a fast machine a kill that comes too late must not end the
            # job before the kills are spent (it did: 5 of 12 landed, then a generation
            # trained to the end).
            cap = min(steps, trained + max(8, (steps - trained) // 4))
            if missed:
                # The last generation's timed kill came after its training ended: this one
                # dies right after a step's apply (it reaches it unless recovery restored the
                # unacknowledged step `trained` and that was the one drawn: then it misses too).
                gen = scenario.run(die_at_step=rng.randrange(trained, cap), die_rank=victim, steps=cap)
            else:
                env, after = None, rng.uniform(0.0, 0.7)  # an open takes ~0.15-0.4 s: recovery, then training
                if rng.random() < 0.5:
                    point, armed = rng.choice(POINTS)
                    armed = victim if armed is None else armed
                    env = {armed: {"REPLAY_FAILPOINTS": f"{point}=kill"}}
                    # The timed kill is a backstop for a failpoint this generation never reaches.
                    after = rng.uniform(0.7, 1.3)
                gen = scenario.run(kill=Kill(victim, after), env=env, steps=cap)
            missed = gen.clean
        scenario.finish()
        counts = scenario.check(reference)
    print(f"\n{world_size} ranks, seed {seed}: {counts}")
    assert counts.kills >= kills // 2, f"seed {seed}: too few kills landed: {counts}"
    assert counts.acks >= steps // 2, counts  # the no-loss check had acknowledged entries to check


@pytest.mark.timeout(120)
def test_survivors_of_a_dead_peer_end_with_an_exception_and_the_restart_is_bit_identical(tmp_path, references):
    """Torchrun's agent would terminate them; here the survivors get 30 s to end on their own.

    A peer dying in a collective of the journal's (flush, confirming snapshots, recovery)
    is RankFailureError naming the collective; in a handler's own collective (DDP's
    all-reduce in backward) it is gloo's RuntimeError, which apply re-raises. Either way
    every survivor leaves the with-block by the exception (closing its journal locally)
    and exits 1; no hang, no signal. The restart then finishes bit-identical.
    """
    steps = 60
    seen = set()
    with Scenario(tmp_path, 3, steps) as scenario:
        assert scenario.run(steps=3).clean
        # A victim that kills itself after a step's apply leaves the others in flush's
        # collective; one killed 0.4 s after the group joined, mostly in recovery's
        # collectives or replayed DDP steps. (A timed kill may come after the end: skipped.)
        plans = [({"die_at_step": 10 * k + 8, "die_rank": 1 + k % 2}, None) for k in range(3)]
        plans += [({}, Kill(1 + k % 2, 0.4)) for k in range(2)]
        for options, kill in plans:
            gen = scenario.run(kill=kill, survivors_grace=30, **options)
            victim = options.get("die_rank", gen.killed)
            if kill is not None and gen.clean:
                continue
            assert gen.exits[victim].killed, gen.describe()
            for exit_ in gen.exits:
                if exit_.rank != victim:
                    assert exit_.exitcode == 1 and exit_.error in ("RankFailureError", "RuntimeError", "HandlerError"), \
                        gen.describe()
                    assert "peer" in exit_.message or "died" in exit_.message, exit_.message
                    seen.add(exit_.error)
        scenario.finish()
        counts = scenario.check(references.get(3, steps))
    print(f"\nsurvivors saw {sorted(seen)}: {counts}")
