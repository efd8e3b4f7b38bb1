"""Determinism: the state digest that replay re-checks, and the deterministic-algorithms guard.

The digest is an order-sensitive 64-bit integer fingerprint of every leaf of the state:

    word_k   = the tensor's raw bytes read as little-endian int32 words (zero-padded)
    weight_k = (k * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) | 1        (odd, mod 2**64)
    h_tensor = sum_k word_k * weight_k                                   (mod 2**64)

computed with int64 tensor ops on the tensor's own device (integer sums wrap and are
associative, so the result is exact and identical on any device and any reduction
order). A change of any single bit changes h_tensor (an odd weight times a nonzero
difference below 2**32 is nonzero mod 2**64), and moving a word to another position
changes its weight. Per-leaf results are folded in sorted-path order together with the
leaf's path, dtype and shape; non-tensor leaves (counters, learning rates) contribute an
xxh3 of their repr. It detects divergence; it is not a cryptographic hash.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import torch
import xxhash

from .components import leaves

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_OFFSET = 0x632BE59BD9B4E019
_FOLD = 0x100000001B3  # FNV prime: odd, so folding is a bijection of the running value
_CHUNK = 1 << 22  # words per step: bounds the temporary weight vector to 32 MiB
CUBLAS_SETTINGS = (":4096:8", ":16:8")


def fingerprint(state: Any) -> dict:
    """{key path: (dtype, shape, raw bytes) for tensors, the value otherwise}; equal iff the
    two states are bit-identical (NaN payloads compare by bits). The one exact comparison of
    states (replay.testing, the tests, the demo and the benchmarks use it); `state_digest`
    is its cheap, on-device summary."""
    out = {}
    for path, leaf in leaves(state):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            out[path] = (str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            out[path] = list(leaf) if isinstance(leaf, tuple) else leaf
    return out


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def tensor_digest(tensor: torch.Tensor) -> int:
    """The unsigned 64-bit digest of one tensor's bytes (see the module docs), on its device."""
    flat = tensor.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8, device=flat.device)
    pad = (-raw.numel()) % 4
    if pad:
        raw = torch.cat([raw, torch.zeros(pad, dtype=torch.uint8, device=raw.device)])
    words = raw.view(torch.int32)
    total = torch.zeros((), dtype=torch.int64, device=words.device)
    for start in range(0, words.numel(), _CHUNK):
        chunk = words[start:start + _CHUNK].to(torch.int64)
        positions = torch.arange(start, start + chunk.numel(), dtype=torch.int64, device=chunk.device)
        weights = positions * _signed(_GOLDEN) + _signed(_OFFSET)  # wraps mod 2**64
        weights = torch.bitwise_or(weights, 1)
        total = total + (chunk * weights).sum()
    return int(total.item()) & _MASK


def state_digest(state: Mapping[str, Any]) -> int:
    """The signed int64 digest of a whole journal state (signed so msgpack stores it as int64)."""
    acc = 0
    for path, leaf in leaves(state):
        if isinstance(leaf, torch.Tensor):
            label = f"{path!r}|{leaf.dtype}|{tuple(leaf.shape)}"
            value = tensor_digest(leaf)
        else:
            label = f"{path!r}|{type(leaf).__name__}"
            value = xxhash.xxh3_64_intdigest(repr(_plain(leaf)).encode())
        acc = (acc * _FOLD + xxhash.xxh3_64_intdigest(label.encode())) & _MASK
        acc = (acc * _FOLD + value) & _MASK
    return _signed(acc)


def _plain(value: Any) -> Any:
    # A tuple that went through a snapshot comes back as a list; both must digest alike.
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class DeterministicGuard:
    """Turns on torch's deterministic algorithms for a journal's lifetime and restores the old setting.

    CUDA also needs CUBLAS_WORKSPACE_CONFIG set before the first cuBLAS call; the guard
    warns (it cannot fix it after the fact) when CUDA is in use and the variable is unset.
    """

    def __init__(self, uses_cuda: bool):
        self._previous = torch.are_deterministic_algorithms_enabled()
        self._previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True)
        if uses_cuda and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_SETTINGS:
            warnings.warn(
                "deterministic=True on CUDA: set CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8) in the environment "
                "before the process starts, or cuBLAS matmuls may differ between a run and its replay",
                RuntimeWarning, stacklevel=3,
            )

    def release(self) -> None:
        """Restore the setting that was in force before the guard. Idempotent."""
        if self._previous is not None:
            torch.use_deterministic_algorithms(self._previous, warn_only=self._previous_warn_only)
            self._previous = None
