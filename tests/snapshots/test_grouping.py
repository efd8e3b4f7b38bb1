"""Byte grouping has one layout whichever implementation runs: c-blosc2's shuffle (when
the optional blosc2 is installed) and the torch/numpy passes group alike, ungroup into
unaligned live bytes alike, and a library that groups differently is refused by the
self-test, never used."""

from __future__ import annotations

import os

import pytest
import torch

from snapshots import blosc, grouping

# CI installs the test extra, which carries blosc2: there a missing library fails the tests
# instead of skipping them silently.
NO_BLOSC2 = blosc.native() is None and not os.environ.get("CI")
needs_blosc2 = pytest.mark.skipif(NO_BLOSC2, reason="blosc2 (the 'fast' extra) is not installed")

WIDTHS = (2, 3, 4, 8)
# Sizes in elements: one, an odd count past a SIMD block, and a chunk-sized run.
COUNTS = (1, 67, 1 << 18)


def _raw(width: int, count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (width * count,), dtype=torch.uint8, generator=g)


def _expected(raw: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([raw[j::width] for j in range(width)])


@pytest.fixture(params=["numpy", "native"])
def implementation(request, monkeypatch):
    """Runs a test once with the numpy/torch passes and once with blosc2's shuffle."""
    if request.param == "numpy":
        monkeypatch.setattr(grouping, "native", lambda: None)
    elif NO_BLOSC2:
        pytest.skip("blosc2 (the 'fast' extra) is not installed")
    return request.param


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("count", COUNTS)
def test_group_writes_byte_j_of_every_element_into_run_j(implementation, width, count):
    raw = _raw(width, count)
    assert torch.equal(grouping.group(raw, width, torch.empty_like(raw)), _expected(raw, width))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("misalign", [0, 1, 3])
def test_ungroup_restores_the_bytes_at_any_alignment_and_writes_nothing_else(implementation, width, count, misalign):
    raw = _raw(width, count, seed=1)
    n = raw.numel()
    canvas = torch.full((n + misalign + 5,), 0xA5, dtype=torch.uint8)
    out = canvas[misalign:misalign + n]  # a live tensor's bytes may start anywhere
    grouping.ungroup(_expected(raw, width), width, out)
    assert torch.equal(out, raw)
    assert torch.all(canvas[:misalign] == 0xA5) and torch.all(canvas[misalign + n:] == 0xA5)


@needs_blosc2
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_native_and_numpy_group_real_floats_to_the_same_bytes(monkeypatch, dtype):
    values = (torch.randn(100_003, generator=torch.Generator().manual_seed(2)) * 0.02).to(dtype)
    raw = values.view(torch.uint8)
    width = dtype.itemsize
    native = grouping.group(raw, width, torch.empty_like(raw))
    monkeypatch.setattr(grouping, "native", lambda: None)
    assert torch.equal(grouping.group(raw, width, torch.empty_like(raw)), native)


class _Wrong:
    """A stand-in library that groups in another layout (elements kept whole)."""

    def shuffle(self, width, n, src, dst):
        import ctypes
        ctypes.memmove(dst, src, n)

    def unshuffle(self, width, n, src, dst):
        import ctypes
        ctypes.memmove(dst, src, n)


def test_a_library_that_groups_in_another_layout_fails_the_self_test():
    with pytest.raises(ValueError, match="does not group width 2"):
        blosc._self_test(_Wrong())


def test_without_blosc2_installed_there_is_no_native_shuffle(monkeypatch):
    monkeypatch.setattr(blosc.importlib.util, "find_spec", lambda name: None)
    blosc.native.cache_clear()
    try:
        assert blosc.native() is None
        raw = _raw(4, 67)
        assert torch.equal(grouping.group(raw, 4, torch.empty_like(raw)), _expected(raw, 4))
    finally:
        blosc.native.cache_clear()  # the next caller looks the library up again
