"""c-blosc2's SIMD byte shuffle, when the optional `blosc2` distribution is installed.

c-blosc2 documents `blosc2_shuffle` and `blosc2_unshuffle` in its public header
(blosc2.h): for a buffer of n bytes and a type size w dividing n, byte j of element i
goes to offset j * (n / w) + i. That is exactly our byte grouping (FORMAT.md, "Byte
grouping"), so the on-disk format does not depend on which implementation ran. The
blosc2 wheel ships the shared library (`blosc2/lib/libblosc2.so`) with that header; it
is called through ctypes, which releases the GIL for the call: one call per chunk,
parallel across the store's worker threads, where the numpy fallback makes seven
GIL-releasing calls per 4-byte chunk and the Python glue between them holds it.

Measured on the development machine (AMD EPYC, AVX2; 4 MiB chunk into a cold
destination, CPU time): unshuffle 0.23 ms for width 2 and 0.37 ms for width 4, against
0.56 and 1.20 ms for the numpy shift-and-or passes, and 1.2 ms for numcodecs' Shuffle
(a scalar Cython loop). The Python package is never imported (it pulls numexpr,
pydantic and more, and takes a second); only its library is loaded.

`native()` returns None when blosc2 is absent, its library cannot be loaded, lacks the
two functions, or fails a self-test against the layout above on first use: then
`grouping` uses numpy. Nothing here is needed for correctness; every loaded chunk's
hash is checked after ungrouping whichever way it ran.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import logging
import os
import threading

log = logging.getLogger(__name__)

# Library file names inside the blosc2 package directory, by platform.
_LIBRARY_GLOBS = ("lib/libblosc2.so*", "lib/libblosc2*.dylib", "lib/*blosc2*.dll", "*blosc2*.dll")
# blosc2 takes sizes as int32: larger buffers are shuffled in pieces (never the case for
# chunks, at most 1 GiB by the format, but the bound is the library's, so it is kept here).
MAX_CALL = (1 << 31) - 1
_LOADING = threading.Lock()  # the first call runs the self-test once, not per thread


class NativeShuffle:
    """Bound `blosc2_shuffle` / `blosc2_unshuffle`. Thread-safe (the functions keep no
    state after the self-test has run their one-time CPU dispatch)."""

    def __init__(self, library: ctypes.CDLL, path: str):
        self.path = path
        self._shuffle = _bind(library.blosc2_shuffle)
        self._unshuffle = _bind(library.blosc2_unshuffle)

    def shuffle(self, width: int, n: int, src: int, dst: int) -> None:
        """Group the `n` bytes at address `src` into `dst` (byte j of each `width`-byte
        element into run j). `width` in 2..255 and dividing `n`; `n` below MAX_CALL;
        the buffers must not overlap. ValueError if the library refuses."""
        _check(self._shuffle(width, n, src, dst), n, "blosc2_shuffle")

    def unshuffle(self, width: int, n: int, src: int, dst: int) -> None:
        """Invert `shuffle`: interleave the `width` runs of the `n` bytes at `src` into
        `dst`, writing exactly `n` bytes there at any alignment. Same limits."""
        _check(self._unshuffle(width, n, src, dst), n, "blosc2_unshuffle")


@functools.cache
def native() -> NativeShuffle | None:
    """The shuffle of the installed blosc2's library, or None (module doc). Looked up
    and self-tested once per process; a failure is logged at debug level only, as
    numpy is an ordinary way to run."""
    with _LOADING:
        path = _library_path()
        if path is None:
            return None
        try:
            shuffle = NativeShuffle(ctypes.CDLL(path), path)
            _self_test(shuffle)
        except (OSError, AttributeError, ValueError) as e:
            log.debug("blosc2 library %s not used: %s", path, e)
            return None
        return shuffle


def _library_path() -> str | None:
    try:
        spec = importlib.util.find_spec("blosc2")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for pattern in _LIBRARY_GLOBS:
            found = sorted(glob.glob(os.path.join(root, pattern)))
            if found:
                return found[0]
    return None


def _bind(fn):
    fn.argtypes = (ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
    fn.restype = ctypes.c_int32
    return fn


def _check(result: int, n: int, name: str) -> None:
    if result != n:
        raise ValueError(f"{name} returned {result} for {n} bytes")


def _self_test(shuffle: NativeShuffle) -> None:
    """Raise ValueError unless the library groups exactly as FORMAT.md says, for every
    width we use, at an unaligned destination (live tensors' bytes may be anywhere)."""
    for width in (2, 4, 8):
        count = 67  # elements: not a multiple of any SIMD block, so the tail path runs too
        n = width * count
        raw = bytes((i * 7 + i // 256) % 256 for i in range(n))
        expected = bytes(raw[i * width + j] for j in range(width) for i in range(count))
        src = ctypes.create_string_buffer(raw, n)
        grouped = ctypes.create_string_buffer(n + 1)
        shuffle.shuffle(width, n, ctypes.addressof(src), ctypes.addressof(grouped) + 1)
        if grouped.raw[1:] != expected:
            raise ValueError(f"blosc2_shuffle does not group width {width} as the format does")
        back = ctypes.create_string_buffer(n + 3)
        shuffle.unshuffle(width, n, ctypes.addressof(grouped) + 1, ctypes.addressof(back) + 3)
        if back.raw[3:] != raw:
            raise ValueError(f"blosc2_unshuffle does not invert the grouping for width {width}")
