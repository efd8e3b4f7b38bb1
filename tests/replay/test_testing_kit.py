"""Dogfooding replay.testing: the project's own ops pass the kit; a handler reading global RNG fails it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import replay
from replay.testing import assert_states_equal, recovery_machine

from .models import make_ops, make_state

OP_STRATEGIES = {
    "add": st.fixed_dictionaries({"row": st.integers(0, 3), "value": st.floats(-1e3, 1e3, allow_nan=False)}),
    "train_step": lambda state: st.fixed_dictionaries({"ids": st.just(state["data"].peek(8)),
                                                       "seed": st.integers(0, 2**31)}),
}

ProjectOps = recovery_machine(lambda: make_state(seed=0), make_ops(), OP_STRATEGIES, max_examples=8, steps=12,
                              digest_every=3)
test_project_ops_recover_bit_exactly = ProjectOps.TestCase


def _noisy_ops():
    ops = replay.Ops()

    @ops.op
    def jitter(state, *, scale):
        state["w"].add_(torch.randn(4) * scale)  # BUG: global RNG, not a seed from the payload

    @ops.op
    def seeded_jitter(state, *, scale, seed):
        state["w"].add_(torch.randn(4, generator=replay.seeded_generator(seed)) * scale)  # the fix

    return ops


def _noisy_state():
    return {"w": torch.zeros(4)}


def test_kit_catches_a_handler_that_reads_global_rng():
    machine = recovery_machine(_noisy_state, _noisy_ops(), {"jitter": st.fixed_dictionaries({"scale": st.just(1.0)})},
                               sigkill=False)
    with pytest.raises(AssertionError, match="not deterministic"):
        run_state_machine_as_test(machine, settings=settings(max_examples=10, stateful_step_count=5, deadline=None,
                                                             database=None))


def test_kit_passes_the_seeded_fix():
    machine = recovery_machine(
        _noisy_state, _noisy_ops(),
        {"seeded_jitter": st.fixed_dictionaries({"scale": st.just(1.0), "seed": st.integers(0, 99)})})
    run_state_machine_as_test(machine, settings=settings(max_examples=5, stateful_step_count=8, deadline=None,
                                                         database=None))


def test_assert_states_equal_names_the_differing_path():
    a, b = {"w": torch.zeros(2), "n": {"k": 1}}, {"w": torch.zeros(2), "n": {"k": 2}}
    with pytest.raises(AssertionError, match=r"\('n', 'k'\)"):
        assert_states_equal(a, b)
    assert_states_equal({"w": torch.tensor([float("nan")])}, {"w": torch.tensor([float("nan")])})
