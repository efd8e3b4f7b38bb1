"""The ground the multi-rank journal tests stand on, checked without any journal.

1. The DDP workload (gloo, CPU) is bit-deterministic: two uninterrupted runs of the
   same world size end with the same bytes, and every rank holds the same parameters
   and optimizer state. Were it not, "bit-identical after kills" could not be asked.
2. A restarted DDP is bit-exact only with fixed buckets: with DDP's default buckets, 3
   ranks and gloo, a run whose DDP wrapper is rebuilt midway (what every restart does)
   ends with other bytes than the uninterrupted run (workload.EXACT_BUCKETS says why);
   with one bucket per parameter it ends with the same bytes. 2 ranks are unaffected.
3. A dead peer surfaces in the survivors as an exception from gloo (RuntimeError,
   "Connection closed by peer" / "Connection reset by peer") at their next collective,
   not as a hang or a signal: every survivor ends by itself with status 1, reporting it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import workload
from .checks import assert_bit_identical, differences, flip_bit, load_states
from .harness import Kill, Launcher

STEPS = 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 3])
def test_uninterrupted_ddp_runs_are_bit_identical(tmp_path, references, world_size):
    first = references.get(world_size, STEPS)
    out = tmp_path / "again"
    out.mkdir()
    with Launcher(world_size, tmp_path / "logs") as launcher:
        gen = launcher.run(workload.train, (str(tmp_path / "unused"), {"steps": STEPS, "out": str(out),
                                                                       "journal": False}))
    assert gen.clean, gen.describe()
    second = load_states(out, world_size)
    assert_bit_identical(second, first, f"{world_size} ranks, second run")
    assert int(second[0]["progress.step"]) == STEPS
    # The comparison sees one flipped bit (of a parameter, and of Adam's state).
    for name in ("model.module.0.weight", "optim.1.exp_avg_sq"):
        assert differences(flip_bit(second[1], name, bit=77), first[1]) == [name]
    # Each rank trained on its own data: one step of rank 0 alone gives other bytes.
    assert workload.payload(3, 0)["ids"] != workload.payload(3, 1)["ids"]


def _rebuilt_midway(rank, world_size, out, ddp_options):
    """Train STEPS; halfway, wrap a new model in a new DDP and load the old state into it, as a restart does."""
    state, ops = workload.build(0, ddp_options)
    handler = ops.spec("train_step").handler
    for step in range(STEPS):
        if step == STEPS // 2:
            old = state
            state, ops = workload.build(1, ddp_options)
            handler = ops.spec("train_step").handler
            state["model"].load_state_dict(old["model"].state_dict())
            state["optim"].load_state_dict(old["optim"].state_dict())
            state["progress"].update(old["progress"])
        handler(state, **workload.payload(step, rank))
    workload.write_result(Path(out), rank, state, {})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 3])
def test_a_rebuilt_ddp_is_bit_exact_only_with_fixed_buckets(tmp_path, world_size):
    ends = {}
    with Launcher(world_size, tmp_path / "logs") as launcher:
        for name, ddp in (("default", {}), ("exact", workload.EXACT_BUCKETS)):
            for how in ("uninterrupted", "rebuilt"):
                out = tmp_path / f"{name}-{how}"
                out.mkdir()
                if how == "uninterrupted":
                    args = (str(tmp_path / "unused"), {"steps": STEPS, "out": str(out), "journal": False, "ddp": ddp})
                    gen = launcher.run(workload.train, args)
                else:
                    gen = launcher.run(_rebuilt_midway, (str(out), ddp))
                assert gen.clean, gen.describe()
                ends[name, how] = load_states(out, world_size)
    for rank in range(world_size):
        assert not differences(ends["exact", "rebuilt"][rank], ends["exact", "uninterrupted"][rank])
        default = differences(ends["default", "rebuilt"][rank], ends["default", "uninterrupted"][rank])
        # 2 ranks: a + b == b + a whatever the order; 3 ranks: the summation order moved.
        assert bool(default) == (world_size > 2), f"rank {rank}: {default}"


def _endless_ddp(rank, world_size):
    state, ops = workload.build(0)
    handler = ops.spec("train_step").handler
    step = 0
    while True:
        handler(state, **workload.payload(step, rank))
        step += 1


@pytest.mark.crash
@pytest.mark.timeout(120)
def test_dead_peer_surfaces_as_gloo_exception_in_every_survivor(tmp_path):
    with Launcher(3, tmp_path / "logs", pg_timeout=30) as launcher:
        gen = launcher.run(_endless_ddp, kill=Kill(rank=1, after=0.5), survivors_grace=25)
    assert gen.killed == 1 and gen.exits[1].killed, gen.describe()
    for rank in (0, 2):
        exit_ = gen.exits[rank]
        # Ended by itself (status 1 after reporting), not by the launcher's SIGTERM/SIGKILL.
        assert exit_.exitcode == 1, gen.describe()
        assert exit_.error == "RuntimeError" and "peer" in exit_.message, gen.describe()
        print(f"rank {rank}: {exit_.error} {exit_.ended - gen.killed_at:.3f} s after the kill: "
              f"{exit_.message[:120]}")
