"""Seeded generators: randomness that comes from the payload, so a replay draws the same numbers."""

from __future__ import annotations

import struct

import torch
import xxhash

_MASK63 = (1 << 63) - 1


def seeded_generator(seed: int, *salt: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator on `device` (cpu or cuda[:n]) seeded from `seed` and optional ints `salt`.

    The same arguments give the same stream on every run and in every replay; handlers
    take `seed` from their payload instead of touching global RNG state. With salt, the
    seed is xxh3-mixed with it (e.g. ``seeded_generator(run_seed, step)``), so nearby
    steps get unrelated streams. Raises TypeError for non-int seeds or salts.
    """
    for value in (seed, *salt):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"seeds must be ints, got {value!r}")
    if salt:
        packed = struct.pack(f"<{len(salt) + 1}Q", *[(v & ((1 << 64) - 1)) for v in (seed, *salt)])
        seed = xxhash.xxh3_64_intdigest(packed)
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed & _MASK63)
    return generator
