"""`replay show DIR INDEX`: one entry in full: header, checksum status, the decoded payload."""

from __future__ import annotations

from typing import Any

import torch
from eventlog import CorruptEntryError

from replay.audit import human_bytes

from .args import check_entry_index, index_arg
from .errors import EXIT_DAMAGE, EXIT_OK
from .output import Output
from .source import open_source
from .summary import iso_time, local_time, split_envelope, tensor_label, tensor_stats, to_jsonable

HELP = "show one entry in full (header, checksum status, decoded payload)"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("show", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory (or a bare event log)")
    p.add_argument("index", type=index_arg, help="the entry's index")
    p.add_argument("--values", action="store_true", help="print every tensor's values too")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    """Exit 0 for a sound entry, 1 when its bytes or chain link are damaged (header still shown)."""
    with open_source(args.dir) as src:
        check_entry_index(src.log, args.index)
        try:
            entry = src.log.entry(args.index)
        except CorruptEntryError as exc:
            return _show_damaged(src.log, args.index, exc, out)
        header = next(src.log.headers(args.index, args.index + 1, verify=False))
    version, body = split_envelope(entry.payload)
    if out.as_json:
        out.record({"index": entry.index, "term": entry.term, "time": iso_time(entry.time_ns),
                    "time_ns": entry.time_ns, "op": entry.op, "payload_bytes": header.payload_size,
                    "checksum": f"{entry.checksum:016x}", "checksum_ok": True, "version": version,
                    "payload": to_jsonable(body, args.values)})
        return EXIT_OK
    out.line(f"entry {entry.index}", style="bold")
    out.line(f"  term      {entry.term}")
    out.line(f"  time      {local_time(entry.time_ns)}  ({iso_time(entry.time_ns)})")
    out.line(f"  op        {entry.op}" + (f"  (version {version})" if version is not None else ""))
    out.line(f"  payload   {human_bytes(header.payload_size)}")
    out.line(f"  checksum  {entry.checksum:016x}  ok (entry and chain link verified)", style="green")
    out.line("payload:")
    for line in _render(body, "  ", args.values):
        out.line(line)
    return EXIT_OK


def _show_damaged(log, index: int, exc: CorruptEntryError, out: Output) -> int:
    try:
        header = next(log.headers(index, index + 1, verify=False))
    except CorruptEntryError:
        header = None  # even the framing is broken: nothing but the reason can be shown
    if out.as_json:
        record: dict[str, Any] = {"index": index, "checksum_ok": False, "damaged": exc.reason}
        if header is not None:
            record.update(term=header.term, time=iso_time(header.time_ns), time_ns=header.time_ns, op=header.op,
                          payload_bytes=header.payload_size, checksum=f"{header.checksum:016x}")
        out.record(record)
        return EXIT_DAMAGE
    out.line(f"entry {index}", style="bold")
    if header is not None:
        out.line(f"  term      {header.term}")
        out.line(f"  time      {local_time(header.time_ns)}")
        out.line(f"  op        {header.op}  (unverified: the entry is damaged)")
        out.line(f"  payload   {human_bytes(header.payload_size)}")
        out.line(f"  checksum  {header.checksum:016x}  DAMAGED: {exc.reason}", style="bold red")
    else:
        out.line(f"  DAMAGED: {exc.reason}", style="bold red")
    out.line("payload: not decoded (a damaged entry's contents cannot be trusted)")
    return EXIT_DAMAGE


def _render(value: Any, indent: str, values: bool) -> list[str]:
    """Indented lines for a payload tree; tensors as one summary line (+ values if asked)."""
    if isinstance(value, dict):
        if not value:
            return [indent + "{}"]
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list, tuple)) and item and not _flat_list(item):
                lines.append(f"{indent}{key}:")
                lines += _render(item, indent + "  ", values)
            else:
                lines += _leaf(f"{indent}{key}: ", item, indent, values)
        return lines
    if isinstance(value, (list, tuple)) and not _flat_list(value):
        lines = []
        for position, item in enumerate(value):
            lines += _render(item, indent + "  ", values) if isinstance(item, (dict, list)) else \
                _leaf(f"{indent}[{position}] ", item, indent, values)
        return lines
    return _leaf(indent, value, indent, values)


def _flat_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list, tuple, torch.Tensor)) for v in value)


def _leaf(prefix: str, value: Any, indent: str, values: bool) -> list[str]:
    if isinstance(value, torch.Tensor):
        s = tensor_stats(value)
        text = f"{prefix}tensor {tensor_label(value)}"
        if value.numel():
            text += f"  min {s['min']:.6g}  max {s['max']:.6g}  mean {s['mean']:.6g}  norm {s['norm']:.6g}"
        text += f"  (device of origin {s['device_of_origin']})"
        lines = [text]
        if values:
            with _full_print():
                lines += [indent + "  " + line for line in str(value.detach().cpu()).splitlines()]
        return lines
    if isinstance(value, (bytes, bytearray)):
        return [f"{prefix}<{len(value)} bytes> {bytes(value[:32]).hex()}{'…' if len(value) > 32 else ''}"]
    return [f"{prefix}{value!r}"]


class _full_print:
    """torch prints every element inside (it elides long tensors by default)."""

    def __enter__(self):
        torch.set_printoptions(profile="full")

    def __exit__(self, *exc):
        torch.set_printoptions(profile="default")
