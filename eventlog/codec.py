"""Payload codec: msgpack plus one extension type for tensors (layout in FORMAT.md).

torch is imported lazily, the first time a tensor is encoded or decoded, so tools that
only read headers never pay for importing it.
"""

from __future__ import annotations

import ctypes
import math
import struct
import sys
import threading
from typing import Any

import msgpack

TENSOR_EXT = 1
TENSOR_CODEC_VERSION = 1
MAX_NDIM = 32

# dtype code -> torch dtype attribute name. Stable and append-only: a code, once
# written to a log, must keep meaning the same dtype forever.
_DTYPE_NAMES = {
    1: "float32", 2: "float64", 3: "float16", 4: "bfloat16",
    5: "uint8", 6: "int8", 7: "int16", 8: "int32", 9: "int64", 10: "bool",
    11: "complex64", 12: "complex128", 13: "complex32",
    14: "uint16", 15: "uint32", 16: "uint64",
    17: "float8_e4m3fn", 18: "float8_e5m2", 19: "float8_e4m3fnuz", 20: "float8_e5m2fnuz",
    21: "float8_e8m0fnu",
}

_SHAPE_DIM = struct.Struct(">Q")
_SHAPES = tuple(struct.Struct(f">{n}Q") for n in range(MAX_NDIM + 1))  # a tensor's whole shape in one unpack

if sys.byteorder != "little":  # pragma: no cover - no big-endian torch builds in use
    raise ImportError("eventlog stores tensors little-endian and supports little-endian hosts only")


class _DtypeTables:
    """The dtype tables, built on first use so importing eventlog does not import torch."""

    torch = None
    code_of: dict = {}
    dtype_of: dict = {}
    itemsize_of: dict = {}  # code -> bytes per element
    numpy_of: dict = {}  # torch dtype -> little-endian numpy dtype, where torch.from_numpy maps it back

    @classmethod
    def load(cls):
        if cls.torch is None:
            import numpy
            import torch

            for code, name in _DTYPE_NAMES.items():
                dtype = getattr(torch, name, None)
                if dtype is not None:
                    cls.code_of[dtype] = code
                    cls.dtype_of[code] = dtype
                    cls.itemsize_of[code] = dtype.itemsize
                    cls._learn_numpy(numpy, torch, name, dtype)
            cls.torch = torch
        return cls.torch

    @classmethod
    def _learn_numpy(cls, numpy, torch, name: str, dtype) -> None:
        # Only dtypes numpy has under the same name and that torch.from_numpy gives back
        # as exactly that dtype (bf16 and float8 have no numpy twin: they stay on frombuffer).
        try:
            twin = numpy.dtype(name).newbyteorder("<")
            if twin.itemsize == dtype.itemsize and torch.from_numpy(numpy.zeros(1, twin)).dtype == dtype:
                cls.numpy_of[dtype] = twin
        except (TypeError, ValueError, RuntimeError):
            pass


def _is_tensor(obj: Any) -> bool:
    # Only looked up, never imported: if torch is not loaded yet, obj cannot be a tensor,
    # so payloads without tensors never pay for importing torch.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def encode_tensor(t) -> bytes:
    """The ext-1 body for tensor `t` (any device, layout-strided, any supported dtype).

    Raises TypeError for sparse/quantized tensors or an unsupported dtype.
    """
    torch = _DtypeTables.load()
    if t.layout != torch.strided:
        raise TypeError(f"tensor layout {t.layout} is not supported; only strided (dense) tensors")
    code = _DtypeTables.code_of.get(t.dtype)
    if code is None:
        raise TypeError(f"tensor dtype {t.dtype} is not supported by the log codec")
    if t.ndim > MAX_NDIM:
        raise TypeError(f"tensor has {t.ndim} dimensions; at most {MAX_NDIM} are supported")
    flat = t.detach().resolve_conj().resolve_neg().to("cpu").contiguous()
    # One copy straight out of the tensor's memory: no numpy dependency, and it works
    # for dtypes numpy lacks (bfloat16, float8).
    raw = ctypes.string_at(flat.data_ptr(), flat.numel() * flat.element_size()) if flat.numel() else b""
    head = bytes((TENSOR_CODEC_VERSION, code, t.ndim)) + b"".join(_SHAPE_DIM.pack(d) for d in t.shape)
    return head + raw


def decode_tensor(body: bytes):
    """A fresh, writable CPU tensor from an ext-1 body. ValueError names what is malformed."""
    torch = _DtypeTables.torch or _DtypeTables.load()
    if len(body) < 3:
        raise ValueError("tensor ext is shorter than its 3-byte header")
    version, code, ndim = body[0], body[1], body[2]
    if version != TENSOR_CODEC_VERSION:
        raise ValueError(f"tensor codec version {version} is unknown")
    dtype = _DtypeTables.dtype_of.get(code)
    if dtype is None:
        raise ValueError(f"tensor dtype code {code} is unknown")
    if ndim > MAX_NDIM:
        raise ValueError(f"tensor ndim {ndim} exceeds {MAX_NDIM}")
    data_at = 3 + 8 * ndim
    if len(body) < data_at:
        raise ValueError("tensor ext is shorter than its shape")
    shape = _SHAPES[ndim].unpack_from(body, 3)
    expected = math.prod(shape) * _DtypeTables.itemsize_of[code]
    if expected != len(body) - data_at:
        # Checked before allocating: a hostile shape cannot make us allocate more than
        # the value actually holds.
        raise ValueError(f"tensor of shape {shape} and dtype {dtype} needs {expected} bytes, ext holds {len(body) - data_at}")
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    buf = bytearray(memoryview(body)[data_at:])  # writable and owned by the tensor
    flat = torch.frombuffer(buf, dtype=dtype)
    # view(*dims), never reshape(tuple): the same tensor, about 2 us less per entry of a replay.
    if ndim == 1:
        return flat
    return flat.view(*shape) if ndim else flat.view(())


def _default(obj: Any):
    if _is_tensor(obj):
        return msgpack.ExtType(TENSOR_EXT, encode_tensor(obj))
    item = getattr(obj, "item", None)
    if item is not None and type(obj).__module__ == "numpy":
        return obj.item()  # numpy scalars: exact as Python int/float/bool
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes):
    if code == TENSOR_EXT:
        return decode_tensor(data)
    raise ValueError(f"unknown msgpack ext type {code}")


def encode_payload(payload: Any, *, str_keys: bool = False) -> bytes:
    """msgpack bytes for `payload`.

    Raises TypeError (or ValueError/OverflowError) naming the path of the first value
    that cannot be encoded, e.g. ``payload['batch'][3]: ...``.

    str_keys: the caller vouches that every map key in `payload` is a str (it built the
    maps from keyword arguments), so the walk that refuses other keys (a tuple key
    would decode as an unhashable list) is skipped: the same bytes, without a pass over
    the payload (replay's apply path, paid once per step). A non-str key given anyway
    is stored as msgpack encodes it, and may fail to decode on read.
    """
    try:
        if not str_keys:
            if type(payload) is dict:
                # The walk's top level, inline (a payload is a dict nearly always): a str
                # key and a leaf value, the common case, cost one type check each; only
                # values that may hold keys are walked.
                for key, value in payload.items():
                    if type(key) is not str and not isinstance(key, _KEY_TYPES):
                        raise TypeError("map key")
                    if type(value) not in _LEAF_TYPES and isinstance(value, (dict, list, tuple)):
                        _check_map_keys(value, 1)
            elif type(payload) not in _LEAF_TYPES:
                _check_map_keys(payload, 0)
        packer = _PACKERS.packer  # _pack, inline: once per append
        if packer is None:
            packer = _PACKERS.packer = _new_packer()
        data = packer.pack(payload)
        if len(data) >= _KEEP_PACKER_BELOW:
            _PACKERS.packer = None
        return data
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError, RecursionError) as exc:
        path, reason = _find_unencodable(payload, "payload", depth=0)
        raise TypeError(f"{path}: {reason}" if path else f"payload cannot be encoded: {exc}") from None


# Exact types of values that hold no map key (anything else, subclasses included, is
# checked as the walk checks it).
_LEAF_TYPES = frozenset((str, bytes, int, float, bool, type(None)))


class _ThreadPackers(threading.local):
    """One reusable msgpack Packer per thread. ``msgpack.packb`` builds a Packer per call,
    most of the cost of packing a small payload; a Packer is not thread-safe, hence one
    per thread. It resets itself after a pack that raised (autoreset), so a refused
    payload leaves nothing behind for the next one."""

    packer: msgpack.Packer | None = None


_PACKERS = _ThreadPackers()
_KEEP_PACKER_BELOW = 1 << 20  # a Packer keeps its grown buffer: drop it after a large payload


def _new_packer() -> msgpack.Packer:
    """A Packer that encodes as ``msgpack.packb(payload, ...)`` with our options does."""
    return msgpack.Packer(default=_default, use_bin_type=True, datetime=False)


_KEY_TYPES = (str, int, bytes, float, type(None))


def _check_map_keys(obj: Any, depth: int) -> None:
    # msgpack would encode a tuple key as an array, which decodes as an unhashable list:
    # an entry that could be written but never read back. Refuse such keys up front.
    if depth > 500:
        raise ValueError("nesting is deeper than 500 levels")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, _KEY_TYPES):
                raise TypeError("map key")
            if isinstance(value, (dict, list, tuple)):
                _check_map_keys(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            if isinstance(value, (dict, list, tuple)):
                _check_map_keys(value, depth + 1)


def decode_payload(data: bytes) -> Any:
    """The value `encode_payload` encoded. ValueError (or msgpack's errors) if malformed."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook, use_list=True)


REUSE_LIMIT = 2**20  # payloads up to this size may go through one reused Unpacker


def payload_unpacker() -> msgpack.Unpacker:
    """An Unpacker decoding as `decode_payload` does, for a loop that feeds it one payload at
    a time (each at most REUSE_LIMIT bytes) and checks that `tell()` advanced by exactly
    that payload's size: one decoder for many payloads costs a fraction of `unpackb`'s
    setup per call. After any error it must be replaced (it may hold the bad bytes).
    Its tensors decode through a `_LayoutCache` of its own (the same tensors as
    `decode_tensor`, fewer checks for a layout already seen)."""
    return msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_LayoutCache().ext_hook, use_list=True,
                            max_buffer_size=2 * REUSE_LIMIT)


class _LayoutCache:
    """Tensor ext decoding for one stream of payloads, remembering the layouts it has checked.

    A log's tensors come in few layouts (a replay sees the same dtype and shape entry
    after entry). Here a header (version, dtype code, ndim and shape, byte for byte) that
    `decode_tensor` has accepted once maps to its dtype, shape, byte count and numpy twin,
    so the next body with those header bytes only has its length checked, and is built
    as one shaped numpy array over a copy of its bytes, handed to torch.from_numpy (for a
    4x64 fp32 tensor about 1.1 us of CPU against 2.7 us for decode_tensor's frombuffer +
    view and checks; dtypes numpy lacks, bf16 and float8, keep frombuffer). Anything else
    (a new layout, an empty tensor, a short or malformed body) goes through
    `decode_tensor`, which raises what it always raised. Bounded: after LIMIT layouts, new
    ones are decoded but not kept. Per Unpacker (not module state), so it lives and dies
    with the stream it serves.
    """

    LIMIT = 64

    def __init__(self):
        # header bytes -> (numpy dtype or None, torch dtype, shape, byte count)
        self._layouts: dict[bytes, tuple[Any, Any, tuple, int]] = {}

    def ext_hook(self, code: int, data: bytes):
        """The tensor of ext `code` with body `data`, as `decode_tensor(data)` gives it;
        ValueError for another ext code or a malformed body."""
        if code != TENSOR_EXT:
            raise ValueError(f"unknown msgpack ext type {code}")
        if len(data) >= 3:
            data_at = 3 + 8 * data[2]
            known = self._layouts.get(data[:data_at])
            if known is not None and len(data) - data_at == known[3]:
                twin, dtype, shape, _ = known
                owned = bytearray(data[data_at:])  # writable and owned by the tensor
                if twin is not None:
                    # Through a shaped numpy array: about a third of frombuffer + view per
                    # small tensor. The tensor shares the bytearray's memory, as frombuffer's does.
                    return self._from_numpy(self._ndarray(shape, twin, owned))
                flat = _DtypeTables.torch.frombuffer(owned, dtype=dtype)
                return flat.view(shape) if len(shape) != 1 else flat
        tensor = decode_tensor(data)
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes and len(self._layouts) < self.LIMIT:
            if not self._layouts:  # torch and numpy are loaded now (decode_tensor loaded the tables)
                import numpy

                self._from_numpy, self._ndarray = _DtypeTables.torch.from_numpy, numpy.ndarray
            self._layouts[bytes(data[:3 + 8 * tensor.ndim])] = (
                _DtypeTables.numpy_of.get(tensor.dtype), tensor.dtype, tuple(tensor.shape), nbytes)
        return tensor


_SCALARS = (type(None), bool, float, str, bytes, bytearray)


def _find_unencodable(obj: Any, path: str, depth: int) -> tuple[str, str]:
    """(path, reason) of the first part of `obj` msgpack cannot encode, or ("", "")."""
    if depth > 500:
        return path, "nesting is deeper than 500 levels"
    if isinstance(obj, _SCALARS):
        if isinstance(obj, str):
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError as exc:
                return path, f"string is not valid UTF-8 ({exc.reason})"
        return "", ""
    if isinstance(obj, int):
        if not -(2**63) <= obj < 2**64:
            return path, f"integer {obj} does not fit in 64 bits"
        return "", ""
    if _is_tensor(obj):
        try:
            encode_tensor(obj)
        except TypeError as exc:
            return path, str(exc)
        return "", ""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, _KEY_TYPES):
                return f"{path}[{key!r}]", f"map key of type {type(key).__name__} cannot be stored (str, int or bytes keys)"
            found = _find_unencodable(value, f"{path}[{key!r}]", depth + 1)
            if found[0]:
                return found
        return "", ""
    if isinstance(obj, (list, tuple)):
        for k, value in enumerate(obj):
            found = _find_unencodable(value, f"{path}[{k}]", depth + 1)
            if found[0]:
                return found
        return "", ""
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return "", ""
    return path, f"object of type {type(obj).__qualname__} cannot be stored in the log (only msgpack values and tensors; pickle is never used)"
