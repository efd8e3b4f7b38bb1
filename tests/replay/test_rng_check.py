"""Journal.open(rng_check=...): a handler drawing from the global RNG outside seeded_rng is
caught at its live apply (replay/rng_check.py), since its resume would silently differ."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import replay
from replay.rng_check import GlobalRngCheck

from .harness import open_journal


def _ops():
    ops = replay.Ops()

    @ops.op
    def unseeded(state, *, seed):
        state["w"].add_(torch.rand(3))  # the global generator: replay draws other numbers

    @ops.op
    def seeded(state, *, seed):
        with replay.seeded_rng(seed):
            state["w"].add_(torch.nn.functional.dropout(torch.ones(3), 0.5))
        state["w"].add_(torch.rand(3, generator=replay.seeded_generator(seed)))

    @ops.op
    def python_random(state, *, seed):
        state["w"].add_(random.random())

    return ops


def _state():
    return {"w": torch.zeros(3)}


def test_an_unseeded_draw_warns_once_per_op_naming_it(tmp_path):
    with open_journal(tmp_path, _state(), _ops()) as journal:
        with pytest.warns(replay.UnseededDrawWarning, match=r"op 'unseeded' drew from the global RNG \(torch \(cpu\)\)"):
            journal.apply("unseeded", seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            journal.apply("unseeded", seed=2)  # once per op
            journal.apply("seeded", seed=3)  # seeded_rng and seeded_generator leave the global RNG alone
        assert journal.count() == 3


def test_the_warning_is_right_a_resume_of_such_a_handler_is_not_exact(tmp_path):
    """Why the check is on by default: the same log, replayed, gives other bytes."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", replay.UnseededDrawWarning)
        with open_journal(tmp_path, _state(), _ops(), snapshot_on_close=False) as journal:
            journal.apply("unseeded", seed=1)
            live = journal.state["w"].clone()
        torch.manual_seed(0)
        torch.rand(1)  # the resumed process's global generator is elsewhere
        with open_journal(tmp_path, _state(), _ops()) as reopened:
            assert reopened.recovery.entries_replayed == 1
            assert not torch.equal(reopened.state["w"], live)


def test_strict_raises_and_rolls_the_entry_back(tmp_path):
    with open_journal(tmp_path, _state(), _ops(), rng_check="strict") as journal:
        journal.apply("seeded", seed=1)
        before = journal.state["w"].clone()
        with pytest.raises(replay.UnseededDrawError) as err:
            journal.apply("unseeded", seed=2)
        assert err.value.op == "unseeded" and err.value.generators == ["torch (cpu)"]
        assert journal.index == journal.log.last_index == 1 and torch.equal(journal.state["w"], before)
        with pytest.raises(replay.UnseededDrawError, match="python random"):  # strict also compares Python's
            journal.apply("python_random", seed=3)
        assert journal.count() == 1


def test_python_random_is_compared_only_when_strict_and_off_compares_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_journal(tmp_path / "warn", _state(), _ops()) as journal:
            journal.apply("python_random", seed=1)  # warn: torch generators only (cost)
        with open_journal(tmp_path / "off", _state(), _ops(), rng_check="off") as journal:
            journal.apply("unseeded", seed=1)
            journal.apply("python_random", seed=2)


def test_numpy_is_compared_when_strict():
    np = pytest.importorskip("numpy")
    check = GlobalRngCheck("strict")
    before = check.before()
    np.random.rand()
    with pytest.raises(replay.UnseededDrawError, match="numpy.random"):
        check.after("op", before)


def test_an_unknown_mode_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(ValueError, match="rng_check"):
        open_journal(tmp_path / "j", _state(), _ops(), rng_check="loud")
    assert not (tmp_path / "j").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_unseeded_draw_on_a_cuda_device_is_caught_and_a_seeded_one_is_not(tmp_path):
    """Dropout on a CUDA tensor draws from that device's generator, not the CPU one."""
    ops = replay.Ops()

    @ops.op
    def drop(state, *, seed, seeded):
        x = torch.ones(64, device=state["w"].device)
        if seeded:
            with replay.seeded_rng(seed):  # CUDA is initialised: every device's generator is forked
                state["w"].add_(torch.nn.functional.dropout(x, 0.5))
        else:
            state["w"].add_(torch.nn.functional.dropout(x, 0.5))

    with open_journal(tmp_path, {"w": torch.zeros(64, device="cuda")}, ops) as journal:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            journal.apply("drop", seed=1, seeded=True)
        with pytest.warns(replay.UnseededDrawWarning, match=r"torch \(cuda:0\)"):
            journal.apply("drop", seed=2, seeded=False)


def _late_drawing_ops(draws_from: int, every: int):
    """An op that leaves the global RNG alone for its first `draws_from` applies, then draws on
    every `every`-th one: past the warn mode's full checks, only the sampling can catch it."""
    ops = replay.Ops()
    calls = [0]

    @ops.op
    def late(state, *, seed):
        calls[0] += 1
        if calls[0] > draws_from and calls[0] % every == 0:
            state["w"].add_(torch.rand(3))
        else:
            state["w"].add_(1.0)

    return ops


@pytest.mark.parametrize("every", [1, 2])
def test_warn_still_catches_a_handler_that_starts_drawing_after_the_full_checks(tmp_path, every):
    """Sampled at one apply in SAMPLE_ODDS (module doc): 400 applies that draw on every
    `every`-th one are missed with probability (7/8)^(400/every), below 1e-11."""
    from replay.rng_check import FULL_CHECKS

    with open_journal(tmp_path, _state(), _late_drawing_ops(FULL_CHECKS + 10, every),
                      snapshot_on_close=False) as journal:
        with pytest.warns(replay.UnseededDrawWarning, match="op 'late'"):
            for i in range(FULL_CHECKS + 10 + 800):
                journal.apply("late", seed=i)


def _counting(check: GlobalRngCheck) -> list:
    compared = []
    before = check.before

    def counted(op=None):
        got = before(op)
        compared.append(got is not None)
        return got

    check.before = counted
    return compared


def test_warn_compares_every_apply_first_then_a_sample_and_strict_every_apply():
    from replay.rng_check import FULL_CHECKS, SAMPLE_ODDS

    warn, strict = GlobalRngCheck("warn"), GlobalRngCheck("strict")
    by_mode = {}
    for check in (warn, strict):
        compared = _counting(check)
        for _ in range(FULL_CHECKS + 800):
            check.after("op", check.before("op"))
        by_mode[check.mode] = compared
    assert all(by_mode["strict"])
    assert all(by_mode["warn"][:FULL_CHECKS])
    sampled = sum(by_mode["warn"][FULL_CHECKS:])
    # 800 Bernoulli(1/8) draws: mean 100, sd ~9.4; the bounds are ~6 sd away
    assert 800 // SAMPLE_ODDS - 55 <= sampled <= 800 // SAMPLE_ODDS + 55
    # another op starts its own full checks
    compared = by_mode["warn"]
    warn.after("other", warn.before("other"))
    assert compared[-1] is True
