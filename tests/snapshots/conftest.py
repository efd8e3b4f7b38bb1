"""Shared fixtures and the bit-exact state comparison used by every snapshots test."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

import snapshots


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def assert_same(a, b, path="<root>"):
    """Bit-identical states: same container types, key types and order, tensor dtype,
    shape and bytes (NaN payloads included)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        assert torch.equal(tensor_bytes(a), tensor_bytes(b)), f"{path}: bytes differ"
    elif isinstance(a, (dict, OrderedDict)):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], f"{path}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, f"{path}: NaN became {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture
def open_store(tmp_path):
    """open_store(**options) -> SnapshotStore in tmp_path/"snap", closed after the test."""
    opened = []

    def make(path=None, **options):
        options.setdefault("chunk_size", 4096)
        options.setdefault("workers", 4)
        store = snapshots.SnapshotStore(path or tmp_path / "snap", **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store):
    return open_store()


def small_model_and_optimizer(seed: int = 0, steps: int = 3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8)
    )
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(torch.randint(0, 50, (4, 5))).square().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    return model, optim
