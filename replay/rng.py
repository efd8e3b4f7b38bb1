"""Randomness that comes from the payload, so a replay draws the same numbers.

Two tools, one seed rule:

- `seeded_generator(seed, *salt)`: a fresh ``torch.Generator``. Use it wherever the code
  that draws takes a ``generator=`` argument (``torch.randn``, ``randperm``, your own
  noise): nothing global is touched, so it is cheap and safe from any thread.
- `seeded_rng(seed, *salt)`: a context manager that forks the *global* generators, seeds
  them, and puts the previous states back on exit. Use it around code that draws from
  the global RNG and cannot take a generator: ``nn.Dropout`` and every HF/torch module
  with dropout, ``torch.rand`` calls inside a library, augmentation code that calls
  ``random.random()`` (``python=True``) or ``np.random`` (``numpy=True``).

Both mix ``seed`` and ``salt`` the same way (`derive_seed`), so ``seeded_rng(s, k)`` seeds
the global CPU generator exactly as ``seeded_generator(s, k)`` seeds its own.

The rules for a handler (the README's "RNG rules"):

1. Every random draw in a handler comes from the payload: a seed the loop logged, with
   ``seeded_generator`` where the API takes a generator and ``seeded_rng`` around
   everything else (the forward pass of a model with dropout).
2. ``seeded_rng`` forks: after the block the global generators are exactly where they
   were, also when the block raises, so code outside is unaffected and blocks nest.
3. CUDA: ``cuda=None`` (the default) forks the generators of every visible CUDA device
   when CUDA is already initialised in this process, and none otherwise (forking would
   initialise it: a DataLoader worker must not). ``cuda=True`` always forks them
   (RuntimeError when CUDA is unavailable); ``cuda=False`` never does. Every device, not
   only the current one, because a module on ``cuda:1`` draws from ``cuda:1``'s
   generator whatever the current device is.
4. The global RNG is process-wide: ``seeded_rng`` must not be used by two threads at once
   (a second thread drawing inside the block would draw from the seeded stream and
   shift it). DataLoader workers are processes, so they may.
5. Draws that depend on the intra-op thread count or on non-deterministic kernels are
   not made reproducible by seeding; see ``Journal.open(deterministic=True)``.
"""

from __future__ import annotations

import contextlib
import random
import struct
import sys
from typing import Iterator

import torch
import xxhash

_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, *salt: int) -> int:
    """The 63-bit seed `seeded_generator` and `seeded_rng` use for (seed, *salt).

    No salt: ``seed & (2**63 - 1)``. With salt: xxh3-64 of the little-endian 64-bit words
    (seed, *salt), masked to 63 bits, so nearby salts give unrelated streams. Negative
    ints are taken modulo 2**64. TypeError for non-int seeds or salts (bools included).
    """
    for value in (seed, *salt):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"seeds must be ints, got {value!r}")
    if salt:
        packed = struct.pack(f"<{len(salt) + 1}Q", *[v & _MASK64 for v in (seed, *salt)])
        seed = xxhash.xxh3_64_intdigest(packed)
    return seed & _MASK63


def seeded_generator(seed: int, *salt: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator on `device` (cpu or cuda[:n]) seeded from `seed` and optional ints `salt`.

    The same arguments give the same stream on every run and in every replay; handlers
    take `seed` from their payload instead of touching global RNG state. With salt, the
    seed is mixed with it (`derive_seed`; e.g. ``seeded_generator(run_seed, step)``), so
    nearby steps get unrelated streams. Raises TypeError for non-int seeds or salts.
    For code that cannot take a generator (dropout), use `seeded_rng`.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(seed, *salt))
    return generator


@contextlib.contextmanager
def seeded_rng(seed: int, *salt: int, cuda: bool | None = None, python: bool = False,
               numpy: bool = False) -> Iterator[int]:
    """Fork the global RNG, seed it from (seed, *salt), and restore the previous state on exit.

    Forked and seeded: torch's global CPU generator always; the CUDA generators by rule 3
    of the module docstring (`cuda` None: every device when CUDA is initialised, True:
    always, False: never); Python's ``random`` with ``python=True``; numpy's legacy global
    RNG (``np.random.*``) with ``numpy=True`` (ImportError without numpy). Each gets the
    same seed, ``derive_seed(seed, *salt)``, which the block receives (``as s``).

    On exit, normal or by an exception, every forked generator is back in the state it
    had on entry (the exception propagates). Nested blocks restore in order. Not for two
    threads at once (rule 4). TypeError for non-int seeds or salts, before anything is
    touched; RuntimeError for ``cuda=True`` without CUDA.

    Example::

        >>> import torch
        >>> from replay.rng import seeded_rng
        >>> layer = torch.nn.Dropout(0.5)
        >>> with seeded_rng(7):
        ...     a = layer(torch.ones(8))
        >>> with seeded_rng(7):
        ...     b = layer(torch.ones(8))
        >>> torch.equal(a, b)
        True
    """
    value = derive_seed(seed, *salt)
    devices = _cuda_devices(cuda)
    np_random = _numpy_random() if numpy else None
    cpu_state = torch.get_rng_state()
    cuda_states = [torch.cuda.get_rng_state(d) for d in devices]
    python_state = random.getstate() if python else None
    numpy_state = np_random.get_state() if np_random is not None else None
    try:
        torch.default_generator.manual_seed(value)
        # Per device, not torch.manual_seed: that would also queue a seed for CUDA
        # devices not yet initialised, a change the exit could not undo.
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(value)
        if python:
            random.seed(value)
        if np_random is not None:
            np_random.seed([value & 0xFFFFFFFF, value >> 32])  # legacy seeds are 32-bit words
        yield value
    finally:
        torch.set_rng_state(cpu_state)
        for d, state in zip(devices, cuda_states):
            torch.cuda.set_rng_state(state, d)
        if python_state is not None:
            random.setstate(python_state)
        if numpy_state is not None:
            np_random.set_state(numpy_state)


def _cuda_devices(cuda: bool | None) -> list[int]:
    if cuda is None:
        cuda = torch.cuda.is_initialized()
    elif not isinstance(cuda, bool):
        raise TypeError(f"cuda must be True, False or None, got {cuda!r}")
    if not cuda:
        return []
    if not torch.cuda.is_available():
        raise RuntimeError("seeded_rng(cuda=True): CUDA is not available in this process")
    return list(range(torch.cuda.device_count()))


def _numpy_random():
    if "numpy" not in sys.modules:
        import numpy  # noqa: F401 - only when asked for; ImportError names the missing package
    return sys.modules["numpy"].random
