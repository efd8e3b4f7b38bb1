"""seeded_rng: the global generators forked, seeded from the payload, and restored."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from replay.rng import derive_seed, seeded_generator, seeded_rng

pytestmark = pytest.mark.timeout(60)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _dropout_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 4))


def test_dropout_inside_is_reproducible_and_seed_dependent():
    model, x = _dropout_model(), torch.ones(8, 16)
    torch.manual_seed(123)
    with seeded_rng(5, 9):
        a = model(x)
    torch.manual_seed(456)  # whatever the global stream was before, the block draws the same
    with seeded_rng(5, 9):
        b = model(x)
    with seeded_rng(5, 10):
        c = model(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seed_mixing_is_seeded_generators():
    for args in [(7,), (7, 3), (7, 3, 11), (-1, 2)]:
        with seeded_rng(*args) as value:
            drawn = torch.rand(6)
        assert value == derive_seed(*args)
        assert torch.equal(drawn, torch.rand(6, generator=seeded_generator(*args)))


def test_global_state_outside_is_unchanged():
    torch.manual_seed(99)
    expected = torch.rand(5)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    with seeded_rng(1):
        torch.rand(1000)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(5), expected)


def test_nested_blocks_restore_in_order():
    with seeded_rng(1):
        first, second = torch.rand(3), torch.rand(3)
    with seeded_rng(1):
        a = torch.rand(3)
        with seeded_rng(2):
            inner = torch.rand(3)
        b = torch.rand(3)
    assert torch.equal(a, first) and torch.equal(b, second)
    with seeded_rng(2):
        assert torch.equal(torch.rand(3), inner)


def test_an_exception_restores_and_propagates():
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with pytest.raises(KeyError, match="boom"):
        with seeded_rng(8, python=True, numpy=True):
            torch.rand(10), random.random(), np.random.rand(10)
            raise KeyError("boom")
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_python_and_numpy_only_when_asked():
    random.seed(1)
    np.random.seed(1)
    with seeded_rng(4):
        py_untouched, np_untouched = random.random(), np.random.rand()
    random.seed(1)
    np.random.seed(1)
    assert (random.random(), np.random.rand()) == (py_untouched, np_untouched)

    draws = []
    for outside in (10, 20):
        random.seed(outside)
        np.random.seed(outside)
        with seeded_rng(4, python=True, numpy=True):
            draws.append((random.random(), float(np.random.rand())))
        assert random.random() == random.Random(outside).random()  # restored: the outside stream goes on
    assert draws[0] == draws[1]


def test_bad_seeds_are_refused_before_anything_is_touched():
    before = torch.get_rng_state()
    for bad in (1.5, "7", True, None):
        with pytest.raises(TypeError, match="seeds must be ints"):
            with seeded_rng(bad):
                pass
        with pytest.raises(TypeError, match="seeds must be ints"):
            with seeded_rng(1, bad):
                pass
    with pytest.raises(TypeError, match="cuda must be"):
        with seeded_rng(1, cuda="yes"):
            pass
    assert torch.equal(torch.get_rng_state(), before)


def test_cuda_none_does_not_initialise_cuda():
    if torch.cuda.is_initialized():
        pytest.skip("CUDA already initialised in this process")
    with seeded_rng(1):
        torch.rand(2)
    assert not torch.cuda.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_true_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        with seeded_rng(1, cuda=True):
            pass


@needs_cuda
def test_cuda_dropout_is_reproducible_and_every_device_restored():
    model = _dropout_model().cuda()
    x = torch.ones(8, 16, device="cuda")
    torch.cuda.manual_seed_all(17)
    before = [torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())]
    with seeded_rng(5):  # CUDA is initialised: forked by default
        a = model(x)
    assert all(torch.equal(torch.cuda.get_rng_state(d), s) for d, s in enumerate(before))
    torch.cuda.manual_seed_all(18)
    with seeded_rng(5):
        b = model(x)
    with seeded_rng(5, cuda=False):  # the CUDA stream is not seeded: another mask
        c = model(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
