"""Small states and ops shared by the replay tests: a real (tiny) training step and cheap counter ops."""

from __future__ import annotations

import torch

import replay
from replay.determinism import fingerprint

FEATURES, CLASSES, SAMPLES = 8, 3, 64


def dataset():
    g = torch.Generator().manual_seed(1234)
    return torch.randn(SAMPLES, FEATURES, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)


def make_state(seed: int = 0):
    """A fresh training state. `seed` changes the model init (replay must not depend on it)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES))
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    return {
        "model": model,
        "optim": optim,
        "data": replay.DataCursor(SAMPLES, seed=7),
        "table": torch.zeros(4, 4),
        "counters": {"steps": 0, "total": 0},
    }


def make_ops(xs=None, ys=None) -> replay.Ops:
    if xs is None:
        xs, ys = dataset()
    ops = replay.Ops()

    @ops.op(validate=lambda p: len(p["ids"]) > 0)
    def train_step(state, *, ids, seed):
        state["data"].consume(ids)
        gen = replay.seeded_generator(seed)
        x = xs[ids] + 0.01 * torch.randn(len(ids), FEATURES, generator=gen)
        loss = torch.nn.functional.cross_entropy(state["model"](x), ys[ids])
        state["optim"].zero_grad()
        loss.backward()
        state["optim"].step()
        state["counters"]["steps"] += 1

    @ops.op
    def add(state, *, row, value):
        state["table"][row] += value
        state["counters"]["total"] += 1

    @ops.op
    def boom(state, *, row):
        state["table"][row] += 1000.0  # half-mutates, then fails
        state["counters"]["total"] += 1000
        raise RuntimeError("boom")

    return ops


def assert_same(a, b):
    """Assert two states (or fingerprints) are bit-identical, naming the first differing leaf."""
    fa = a if _is_fingerprint(a) else fingerprint(a)
    fb = b if _is_fingerprint(b) else fingerprint(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert fa[key] == fb[key], key


def _is_fingerprint(x) -> bool:
    return isinstance(x, dict) and bool(x) and all(isinstance(k, tuple) for k in x)
