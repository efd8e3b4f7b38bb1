"""Human summaries of entries: one-line payload digests, tensor statistics, times.

Tensors are never printed in full unless asked: a line shows ``f32[32,8]``, `show` adds
min/max/mean/norm. The log format does not record a tensor's device of origin (payload
tensors always decode to CPU; eventlog/FORMAT.md), so summaries say so rather than guess.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import torch

from replay.envelope import unwrap

ORIGIN_UNRECORDED = "not recorded by the log format"
_SHORT_DTYPES = {
    torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "bool", torch.complex64: "c64", torch.complex128: "c128",
}


def short_dtype(dtype: torch.dtype) -> str:
    return _SHORT_DTYPES.get(dtype, str(dtype).removeprefix("torch."))


def tensor_label(t: torch.Tensor) -> str:
    """'f32[32,8]' (a scalar tensor: 'f32[]')."""
    return f"{short_dtype(t.dtype)}[{','.join(str(d) for d in t.shape)}]"


def split_envelope(payload: Any) -> tuple[int | None, Any]:
    """(op version, op payload) of a replay envelope; (None, payload) for anything else (a bare log)."""
    try:
        return unwrap(0, "", payload)
    except Exception:  # not an envelope: a bare eventlog payload is shown as it is
        return None, payload


def one_line(payload: Any, width: int = 72) -> str:
    """A short summary of a decoded payload: 'v1 ids=[32 ints] seed=7 lr=0.001'."""
    version, body = split_envelope(payload)
    if isinstance(body, dict):
        text = " ".join(f"{k}={_brief(v)}" for k, v in body.items())
    else:
        text = _brief(body)
    if version is not None:
        text = f"v{version} {text}".rstrip()
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief(value: Any, depth: int = 0) -> str:
    if isinstance(value, torch.Tensor):
        return tensor_label(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 24 else repr(value[:21]) + "…"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)):
        kinds = {type(v).__name__ for v in value}
        if len(value) > 4 and len(kinds) == 1:
            return f"[{len(value)} {kinds.pop()}s]"
        if depth > 1 or len(value) > 4:
            return f"[{len(value)} items]"
        return "[" + ", ".join(_brief(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        if depth > 1 or len(value) > 4:
            return f"{{{len(value)} keys}}"
        return "{" + " ".join(f"{k}={_brief(v, depth + 1)}" for k, v in value.items()) + "}"
    return type(value).__name__


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """dtype, shape, numel and (non-empty tensors) min/max/mean/norm, as plain Python numbers.

    Statistics are computed in float64 (complex: of the magnitudes; bool: as 0/1), so they
    do not overflow for half-precision inputs.
    """
    stats: dict[str, Any] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                             "numel": t.numel(), "device_of_origin": ORIGIN_UNRECORDED}
    if t.numel():
        x = (t.abs() if t.is_complex() else t).detach().to("cpu", torch.float64)
        stats.update(min=x.min().item(), max=x.max().item(), mean=x.mean().item(),
                     norm=torch.linalg.vector_norm(x).item())
    return stats


def to_jsonable(value: Any, values: bool = False) -> Any:
    """A decoded payload as JSON-ready data; tensors as their stats (plus 'values' if asked)."""
    if isinstance(value, torch.Tensor):
        stats = tensor_stats(value)
        if values:
            stats["values"] = value.detach().cpu().tolist() if not value.is_complex() else str(value.tolist())
        return {"tensor": stats}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, values) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    return value


def local_time(time_ns: int) -> str:
    """'2024-05-01 12:03:04.123' in the local timezone."""
    return dt.datetime.fromtimestamp(time_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def iso_time(time_ns: int) -> str:
    """ISO 8601 with the local UTC offset, millisecond precision (for JSON)."""
    return dt.datetime.fromtimestamp(time_ns / 1e9).astimezone().isoformat(timespec="milliseconds")
