"""Catch a handler that draws from the global RNG outside `seeded_rng` (on by default).

Replay is exact only if every random draw in a handler comes from its payload
(replay/rng.py, the README's "Randomness: the rules"). A handler that calls dropout,
``torch.rand`` or ``random.random()`` without ``seeded_rng`` draws from wherever the
global generator happens to be: live and on replay those are different places, so the
resumed run silently differs, and ``digest_every`` only notices at the next digest.

The check is cheap because ``seeded_rng`` forks: after a block the global generators
are back where they were. So if a generator's state differs after the handler from
before it, the handler drew from it outside ``seeded_rng`` (or seeded it itself). The
journal compares around every live apply:

- torch's global CPU generator always, and each CUDA device's when CUDA is initialised
  (the CPU state is 5 KB, a CUDA one 16 bytes);
- with ``rng_check="strict"`` also Python's ``random`` and, when numpy is imported,
  numpy's legacy global RNG (tens of microseconds more, so not by default).

``"warn"`` (default): an `UnseededDrawWarning` once per op and journal. It compares
every apply of an op until the op has been compared FULL_CHECKS times, then one apply
in SAMPLE_ODDS, chosen at random by a private generator (never the global ones). Why:
right after a training step's compute, the CPU's caches hold none of torch's code, and
the comparison's two state copies cost 30-80 us there, up to 1.5% of a 5 ms step on this
project's 2-core test machine (bench/apply.py --steps); sampled, about a tenth of that.
A handler that draws on every apply is still reported at its first; one that draws on a
fraction f of its applies, after about SAMPLE_ODDS / f more of them, and a schedule
(every other step) cannot hide from a random choice. ``"strict"`` compares every apply
and raises `UnseededDrawError` from it, whose entry is then rolled back like any
handler failure (replay/INVARIANTS.md, invariant 6). ``"off"``: nothing is compared.
Replay itself is not checked (the live apply already was, and a log written before the
check existed must still recover).

A handler that seeds the global RNG from its payload itself (``torch.manual_seed(seed)``)
is reproducible but still changes the generator the rest of the program draws from, and
is reported too: wrap it in ``seeded_rng(seed)`` instead. Another thread drawing from
the global RNG while a handler runs is reported as the handler's draw.
"""

from __future__ import annotations

import random
import sys
import warnings
from typing import Any

import torch

from .errors import ReplayError

MODES = ("warn", "strict", "off")
FULL_CHECKS = 32  # warn mode: applies of an op compared every time before sampling starts
SAMPLE_ODDS = 8  # warn mode, after FULL_CHECKS: one apply in this many is compared (a power of two)


class UnseededDrawWarning(RuntimeWarning):
    """A handler drew from the global RNG outside seeded_rng: a replay will not draw the same numbers."""


class UnseededDrawError(ReplayError):
    """``rng_check="strict"``: a handler drew from the global RNG outside seeded_rng (the entry is rolled back)."""

    def __init__(self, op: str, generators: list[str], where: str):
        self.op, self.generators = op, generators
        super().__init__(_message(op, generators, where))


class GlobalRngCheck:
    """Compares the global generators before and after a handler (module doc).

    Call sequence, on the applying thread: ``before = check.before()``, run the handler,
    ``check.after(op, before)``; `after` warns or raises (per `mode`) when a generator
    moved. ValueError for a mode not in MODES.
    """

    def __init__(self, mode: str = "warn", where: str = ""):
        if mode not in MODES:
            raise ValueError(f"rng_check must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.where = where
        # warn mode: how often each op has been compared (-1 once reported), and the private
        # generator that picks the sampled applies (seeded from the OS: a journal's choice
        # must not follow the program's seeds, or a seeded schedule could line up with it)
        self._compared: dict[str | None, int] = {}
        self._sampler = random.Random()
        self._sample_bits = SAMPLE_ODDS.bit_length() - 1
        # Looked up once: before() runs after the caller's compute step, when little of this
        # is in the CPU's caches, and every lookup there costs (bench/apply.py --steps).
        self._cpu = torch.default_generator
        self._cuda_initialized = torch.cuda.is_initialized
        # The CPU state before a handler as a clone of the generator where torch has one
        # (2.4+): half the cost of get_state's tensor there (_same_state reads it after).
        self._copy_cpu = getattr(self._cpu, "clone_state", self._cpu.get_state)

    def before(self, op: str | None = None) -> Any:
        """The generators' states now, or None: always when off; in warn mode for an `op`
        already reported (warned once per op: checking it again could only find what was
        said) and for an apply the sampling skips (module doc). Strict: every call."""
        mode = self.mode
        if mode == "warn":
            compared = self._compared.get(op, 0)
            if compared < 0 or (compared >= FULL_CHECKS and self._sampler.getrandbits(self._sample_bits)):
                return None
            self._compared[op] = compared + 1
        elif mode == "off":
            return None
        cuda = ([(d, torch.cuda.default_generators[d].get_state()) for d in range(torch.cuda.device_count())]
                if self._cuda_initialized() else [])
        if self.mode != "strict":
            return self._copy_cpu(), cuda, None, None
        numpy = sys.modules.get("numpy")
        return (self._copy_cpu(), cuda, random.getstate(),
                numpy.random.get_state() if numpy is not None else None)

    def after(self, op: str, before: Any) -> None:
        """Warn once per op (or raise UnseededDrawError when strict) if a generator moved since `before`."""
        if before is None:
            return
        cpu, cuda, python, numpy_state = before
        moved = []
        if not _same_state(cpu, self._cpu):
            moved.append("torch (cpu)")
        for device, state in cuda:
            if not _same_state(state, torch.cuda.default_generators[device]):
                moved.append(f"torch (cuda:{device})")
        if python is not None and python != random.getstate():
            moved.append("python random")
        if numpy_state is not None and not _same_numpy(numpy_state, sys.modules["numpy"].random.get_state()):
            moved.append("numpy.random")
        if not moved:
            return
        if self.mode == "strict":
            raise UnseededDrawError(op, moved, self.where)
        if self._compared.get(op) != -1:
            self._compared[op] = -1  # reported: before() skips it from now on
            # stacklevel: the line that called Journal.apply (after, Applier.apply, Guards.run between)
            warnings.warn(_message(op, moved, self.where) + " (reported once per op; rng_check='strict' raises)",
                          UnseededDrawWarning, stacklevel=5)


def _same_state(before: torch.Tensor | torch.Generator, generator: torch.Generator) -> bool:
    """Whether `generator`'s state is still `before`: a state tensor its get_state returned, or
    a generator its clone_state returned (whose state is then read only here).

    States are compared as the tensors get_state returns, with ``torch.equal``: right after
    the caller's compute step (the cache cold) that costs half of turning each state into
    bytes first (ctypes.string_at, the earlier way; that was a few microseconds less only in
    a tight loop of applies with no work between them). A CUDA generator's state is a CPU
    tensor too."""
    if isinstance(before, torch.Generator):
        before = before.get_state()
    return torch.equal(before, generator.get_state())


def _same_numpy(a: tuple, b: tuple) -> bool:
    # (name, keys array, pos, has_gauss, cached_gaussian)
    return a[0] == b[0] and (a[1] == b[1]).all() and a[2:] == b[2:]


def _message(op: str, generators: list[str], where: str) -> str:
    place = f"{where}: " if where else ""
    return (f"{place}the handler of op {op!r} drew from the global RNG ({', '.join(generators)}) outside "
            "replay.seeded_rng: a replay will not draw the same numbers, so a resumed run is not exact. Take the "
            "randomness from the payload: replay.seeded_rng(seed) around the draws, or "
            "replay.seeded_generator(seed) where the API takes generator=")
