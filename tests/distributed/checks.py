"""Reading back what ranks wrote (safetensors and JSON, never pickle) and comparing states bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_states(out: str | Path, world_size: int) -> list[dict[str, torch.Tensor]]:
    """Each rank's final tensors from ``<out>/rank-<r>.safetensors`` (AssertionError naming a missing one)."""
    states = []
    for rank in range(world_size):
        path = Path(out) / f"rank-{rank}.safetensors"
        assert path.exists(), f"rank {rank} wrote no final state ({path})"
        states.append(load_file(str(path)))
    return states


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose presence, dtype, shape or raw bytes differ between two states (empty: bit-identical)."""
    out = sorted(set(a) ^ set(b))
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape or raw(x) != raw(y):
            out.append(name)
    return out


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_identical(states: list[dict], reference: list[dict], what: str) -> None:
    """Every rank equals the reference's same rank and rank 0 of itself, bit for bit."""
    assert len(states) == len(reference), f"{what}: {len(states)} ranks, reference has {len(reference)}"
    for rank, state in enumerate(states):
        diff = differences(state, reference[rank])
        assert not diff, f"{what}: rank {rank} differs from the reference in {diff[:8]}"
        diff = differences(state, states[0])
        assert not diff, f"{what}: rank {rank} differs from rank 0 in {diff[:8]}"


def flip_bit(state: dict[str, torch.Tensor], name: str, bit: int = 0) -> dict[str, torch.Tensor]:
    """A copy of `state` with one bit of tensor `name` flipped (to prove a comparison can fail)."""
    copy = {k: v.clone() for k, v in state.items()}
    flat = copy[name].reshape(-1).view(torch.uint8)
    flat[bit // 8] ^= 1 << (bit % 8)
    return copy


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(path)]
