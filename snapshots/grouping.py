"""Byte grouping of chunks: byte j of every `width`-byte element stored together.

This is the transform FORMAT.md ("Chunk file", CODEC_STREAMS) describes: a chunk of n
bytes with group width w is stored as w runs of n/w bytes, run j holding byte j (little
endian significance) of every element. Grouping puts the exponent bytes of floats side
by side, which is what makes them compressible. `group` runs on save, `ungroup` on load.

Both use c-blosc2's SIMD shuffle when the optional blosc2 distribution is installed
(`blosc.native`: one GIL-free call per chunk, 2.4-3.3x less CPU to ungroup than numpy),
else the torch and numpy passes below. The bytes are the same either way.
"""

from __future__ import annotations

import numpy as np
import torch

from .blosc import MAX_CALL, native


# Integer dtypes whose shifts group a whole chunk in a few vectorized torch passes (save).
_SHIFT_TYPES = {2: torch.int16, 4: torch.int32}
# Unsigned word types whose shifts ungroup a whole chunk in a few numpy passes (load).
_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}

# Why numpy, not torch, to ungroup: it runs on the store's worker threads, several at
# once, and each torch op there forks its own OpenMP team over the same cores (a hot
# load_into spent most of its CPU spinning in libgomp, measured with py-spy: 375 ms of
# CPU for 256 MiB with torch, 175 ms with numpy). numpy's loops are single-threaded and
# release the GIL, so the parallelism is the pool's, one chunk per thread. Shift-and-or
# passes over whole words are SIMD; a strided byte copy (a transpose) measured 10-30x
# slower. Splitting the passes into L2-sized blocks measured within 10% (and multiplies
# the GIL round trips); these passes cost 0.56 ms (width 2) and 1.2 ms (width 4) of CPU
# per 4 MiB chunk, hence blosc2 where installed. `group` (the save side) keeps torch
# when blosc2 is absent: its cost there is small next to zstd (equal CPU measured
# either way).


def group(raw: torch.Tensor, width: int, out: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """Write byte `j` of every `width`-byte element of `raw` into the j-th run of `out`.
    `tmp`, if given, is scratch space of at least `raw`'s size (else one is allocated).
    `raw` and `out` are contiguous uint8 CPU tensors of equal size, a multiple of `width`."""
    if _native_fits(raw, width, out):
        native().shuffle(width, raw.numel(), raw.data_ptr(), out.data_ptr())
        return out
    rows = out.view(width, -1)
    if width in _SHIFT_TYPES:
        # Byte j of a little-endian integer is (x >> 8j) narrowed to uint8 (a narrowing copy
        # keeps the low byte), which torch vectorizes: 2-3x faster than strided byte copies.
        words = raw.view(_SHIFT_TYPES[width])
        shifted = (tmp[:raw.numel()] if tmp is not None else torch.empty_like(raw)).view(words.dtype)
        rows[0].copy_(words)
        for j in range(1, width):
            torch.bitwise_right_shift(words, 8 * j, out=shifted)
            rows[j].copy_(shifted)
        return out
    elements = raw.view(-1, width)
    for j in range(width):
        # One strided copy per byte position is several times faster than .t().contiguous().
        rows[j].copy_(elements[:, j])
    return out


def ungroup(grouped: torch.Tensor, width: int, out: torch.Tensor) -> torch.Tensor:
    """Invert `group`: interleave the `width` runs of `grouped` back into `out`, writing
    nothing else (`out` may be a live tensor's bytes, at any alignment). Both are uint8
    CPU tensors of equal size, a multiple of `width`; `grouped` is contiguous."""
    if _native_fits(grouped, width, out):
        native().unshuffle(width, grouped.numel(), grouped.data_ptr(), out.data_ptr())
        return out
    rows = grouped.numpy().reshape(width, -1)
    if width in _WORDS:
        # Horner over the bytes, most significant first: x = (x << 8) | byte, in place.
        words = out.numpy().view(_WORDS[width])
        np.copyto(words, rows[width - 1])
        for j in range(width - 2, -1, -1):
            np.left_shift(words, 8, out=words)
            np.bitwise_or(words, rows[j], out=words)
        return out
    elements = out.numpy().reshape(-1, width)
    for j in range(width):
        elements[:, j] = rows[j]
    return out


def _native_fits(src: torch.Tensor, width: int, dst: torch.Tensor) -> bool:
    """Whether blosc2's shuffle is installed and takes this call: both buffers contiguous
    on the CPU, a width it groups by, a size within its int32 bound."""
    return (width > 1 and 0 < src.numel() < MAX_CALL and src.device.type == dst.device.type == "cpu"
            and src.is_contiguous() and dst.is_contiguous() and native() is not None)
