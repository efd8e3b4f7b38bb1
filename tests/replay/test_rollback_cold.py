"""Invariant 15 (replay/INVARIANTS.md): a rollback is indistinguishable from a crash and a cold reopen.

A handler that raises after ``backward()`` leaves gradients behind; a cold process has
none. The rollback (``replay.applier.Applier._roll_back`` -> recovery at index - 1)
must replay on the state a cold reopen would have, so the rolled-back state, and
everything trained after it, equals an uninterrupted run's bit for bit, whatever the
handler's shape.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replay

from .harness import open_journal


class Fail(RuntimeError):
    """The injected failure (an OOM, a NaN guard, a dying DataLoader worker)."""


def _make_state(momentum: float):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optim = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    return {"model": model, "optim": optim}


def _micro_batch(seed: int, k: int):
    g = replay.seeded_generator(seed, k)
    return torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)


def _make_ops(shape: dict, fail_at: dict):
    """The handler of `shape`: zero_grad "start" or "end", `accum` micro-batches, and a
    failure (once, at the entry whose seed is fail_at["seed"]) at fail_at["point"]:
    "before" any backward, "after:k" the k-th backward, or "after_step"."""
    ops = replay.Ops()

    @ops.op
    def step(state, *, seed):
        model, optim = state["model"], state["optim"]
        failing = fail_at.get("seed") == seed
        if failing:
            fail_at["seed"] = None  # raises once; the replay and the retry succeed
        if shape["zero_grad"] == "start":
            optim.zero_grad()
        if failing and fail_at["point"] == "before":
            raise Fail("before backward")
        for k in range(shape["accum"]):
            x, y = _micro_batch(seed, k)
            (torch.nn.functional.mse_loss(model(x), y) / shape["accum"]).backward()
            if failing and fail_at["point"] == f"after:{k}":
                raise Fail(f"after backward {k}")
        optim.step()
        if failing and fail_at["point"] == "after_step":
            raise Fail("after optimizer step")
        if shape["zero_grad"] == "end":
            optim.zero_grad()

    return ops


def _tensors(state) -> list[tuple[str, torch.Tensor]]:
    """What a cold reopen reproduces: every tensor of every component's state_dict."""
    out = []
    for name, component in state.items():
        for key, value in _flatten(component.state_dict(), (name,)):
            if isinstance(value, torch.Tensor):
                out.append((key, value.detach().clone()))
    return out


def _flatten(tree, path):
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from _flatten(tree[key], path + (key,))
    elif isinstance(tree, (list, tuple)):
        for i, item in enumerate(tree):
            yield from _flatten(item, path + (i,))
    else:
        yield "/".join(map(str, path)), tree


def _uninterrupted(shape: dict, momentum: float, steps: int) -> list[list[tuple[str, torch.Tensor]]]:
    """The state after each of `steps` entries of a run that never failed (no journal)."""
    state, handler = _make_state(momentum), _make_ops(shape, {}).spec("step").handler
    after = [_tensors(state)]
    for seed in range(1, steps + 1):
        handler(state, seed=seed)
        after.append(_tensors(state))
    return after


def _assert_equal(actual, expected, where: str) -> None:
    assert [k for k, _ in actual] == [k for k, _ in expected], where
    differing = [k for (k, a), (_, b) in zip(actual, expected) if not torch.equal(a, b)]
    assert not differing, f"{where}: {differing} differ from the uninterrupted run"


def _rolled_back_run(root, shape: dict, momentum: float, fail_seed: int, point: str, steps: int, every: int):
    """Journal run that fails once at `fail_seed` (retrying it); returns (state after the
    rollback, final state, state after a cold reopen of the final journal)."""
    fail_at = {"seed": fail_seed, "point": point}
    state = _make_state(momentum)
    ops = _make_ops(shape, fail_at)
    # durability "os": no crash here, and an fsync per apply would only slow the examples down.
    with open_journal(root, state, ops, snapshot=replay.Every(entries=every), durability="os") as journal:
        for seed in range(1, fail_seed):
            journal.apply("step", seed=seed)
        with pytest.raises(Fail):
            journal.apply("step", seed=fail_seed)
        assert journal.index == fail_seed - 1
        rolled_back = _tensors(state)
        for seed in range(fail_seed, steps + 1):
            journal.apply("step", seed=seed)
        final = _tensors(state)
    cold = _make_state(momentum)
    with open_journal(root, cold, _make_ops(shape, {})):
        reopened = _tensors(cold)
    return rolled_back, final, reopened


def test_a_rollback_after_backward_does_not_replay_on_the_failed_steps_gradients(tmp_path):
    """The issue's reproducer: Linear(8, 1), SGD with momentum, snapshots every 4, two
    accumulated micro-batches, zero_grad at the end of the step, a failure at entry 6
    after the first backward: the rollback replays entry 5 from snapshot 4."""
    shape = {"zero_grad": "end", "accum": 2}
    expected = _uninterrupted(shape, 0.9, 10)
    rolled_back, final, reopened = _rolled_back_run(tmp_path, shape, 0.9, fail_seed=6, point="after:0",
                                                    steps=10, every=4)
    _assert_equal(rolled_back, expected[5], "right after the rollback")
    _assert_equal(final, expected[10], "after training on")
    _assert_equal(reopened, expected[10], "after a cold reopen")


def test_restoring_a_snapshot_leaves_no_gradient_behind(tmp_path):
    """Every restore path (components.restore) clears .grad, as a fresh process has none:
    module parameters, an optimizer's parameters, bare tensor components."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    extra = torch.zeros(2, requires_grad=True)
    optim = torch.optim.SGD(list(model.parameters()) + [extra], lr=0.1)
    state = {"model": model, "optim": optim, "extra": extra}
    ops = replay.Ops()

    @ops.op
    def nothing(state):
        pass

    with open_journal(tmp_path, state, ops) as journal:
        (model(torch.ones(1, 3)).sum() + extra.sum()).backward()
        assert all(p.grad is not None for p in [*model.parameters(), extra])
        journal.snapshot(wait=True)
        journal._replayer.recover(journal.log, journal.snapshots)
        assert [p.grad for p in [*model.parameters(), extra]] == [None, None, None]


_SHAPES = st.fixed_dictionaries({
    "zero_grad": st.sampled_from(["start", "end"]),
    "accum": st.integers(1, 3),
})


@pytest.mark.timeout(900)  # ~25 journals: bounds a hang on a loaded machine, not a timing
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=_SHAPES, momentum=st.sampled_from([0.0, 0.9]), data=st.data())
def test_property_a_rollback_then_training_on_equals_an_uninterrupted_run(shape, momentum, data):
    points = ["before", "after_step"] + [f"after:{k}" for k in range(shape["accum"])]
    point = data.draw(st.sampled_from(points), label="point")
    every = data.draw(st.integers(2, 5), label="snapshot every")
    fail_seed = data.draw(st.integers(1, 9), label="failing entry")
    steps = 10
    expected = _uninterrupted(shape, momentum, steps)
    with tempfile.TemporaryDirectory() as root:
        rolled_back, final, reopened = _rolled_back_run(root, shape, momentum, fail_seed, point, steps, every)
    _assert_equal(rolled_back, expected[fail_seed - 1], "right after the rollback")
    _assert_equal(final, expected[steps], "after training on")
    _assert_equal(reopened, expected[steps], "after a cold reopen")


@pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch.amp.GradScaler is torch >= 2.3")
def test_a_rollback_after_a_grad_scalers_unscale_replays_as_a_cold_process(tmp_path):
    """A NaN guard between ``scaler.unscale_()`` and ``scaler.step()``: the scaler remembers
    the optimizer as unscaled until ``update()``, a fresh process does not. Without
    forgetting it, the rollback's replay raised "unscale_() has already been called" and
    poisoned the journal; with it, the run equals an uninterrupted one."""
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return {"model": model, "optim": optim,
                "scaler": torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)}

    fail = {"at": 6}
    ops = replay.Ops()

    @ops.op
    def step(state, *, seed):
        model, optim, scaler = state["model"], state["optim"], state["scaler"]
        x, y = _micro_batch(seed, 0)
        scaler.scale(torch.nn.functional.mse_loss(model(x[:, :4]), y)).backward()
        scaler.unscale_(optim)
        if fail["at"] == seed:
            fail["at"] = None
            raise Fail("NaN guard")
        scaler.step(optim)
        scaler.update()
        optim.zero_grad()

    state = make()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=4)) as journal:
        for seed in range(1, 11):
            try:
                journal.apply("step", seed=seed)
            except Fail:
                assert journal.index == seed - 1
                journal.apply("step", seed=seed)
    reference = make()
    for seed in range(1, 11):
        ops.spec("step").handler(reference, seed=seed)
    _assert_equal(_tensors(state), _tensors(reference), "after a rollback past unscale_")
