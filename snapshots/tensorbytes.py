"""Tensors as bytes: the dtype table, flat byte views, and buffers for C libraries.

torch tensors do not export the buffer protocol without numpy, and this package must not
need numpy, so `buffer()` wraps a tensor's memory in a ctypes array instead. The wrapper
keeps the tensor alive for as long as the buffer is referenced.
"""

from __future__ import annotations

import ctypes

import torch

# Every dtype a snapshot may hold, by the name written in manifests. Names a torch build
# lacks are left out; a manifest naming a dtype outside this table is corrupt.
_DTYPE_NAMES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
)
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in _DTYPE_NAMES if isinstance(getattr(torch, name, None), torch.dtype)
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def group_width(dtype: torch.dtype) -> int:
    """Byte-group width for a dtype: the size of one IEEE float component for floating and
    complex dtypes of 2, 4 or 8 bytes per component, else 1 (no grouping)."""
    size = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize
    if (dtype.is_floating_point or dtype.is_complex) and size in (2, 4, 8):
        return size
    return 1


def byte_view(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous CPU tensor as a flat uint8 tensor sharing its memory."""
    if tensor.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return tensor.reshape(-1).view(torch.uint8)


def buffer(raw: torch.Tensor) -> memoryview:
    """A writable byte memoryview over a contiguous CPU tensor (usually uint8; of any
    dtype, its bytes, as `byte_view` would give them), without copying."""
    n = raw.nbytes
    if n == 0:
        return memoryview(bytearray())
    array = (ctypes.c_char * n).from_address(raw.data_ptr())
    array._keep_alive = raw  # the memoryview references the array, the array the tensor
    return memoryview(array).cast("B")
