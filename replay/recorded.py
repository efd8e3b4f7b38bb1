"""Recorded scalars: values an op's handler returns (a loss, an accuracy), kept beside the log.

An op opts in with ``@ops.op(record=("loss",))``. The entry is appended before its
handler runs (write-ahead), so its values exist only afterwards: they are metadata
stored in a file of their own, never in the entry, and replay never feeds them back
into the state. The file is a cache of what the deterministic handlers return: what a
crash loses of it, recovery's replay recomputes.

File format, ``DIR/recorded.jsonl`` (replay.layout.recorded_file), version 1
--------------------------------------------------------------------------

UTF-8 JSON lines. The first line is exactly::

    {"format": "replay-recorded", "version": 1}

Every later line is one applied entry's values::

    {"t": 7, "i": 1042, "op": "train_step", "v": {"loss": 0.4375, "lr": 0.001}}

``t`` and ``i`` are the entry's term and index, ``op`` its op, ``v`` maps each recorded
name to a JSON number (an int stays an int; a float is written as Python's repr, so it
reads back as the same double) or ``null`` for NaN. Lines are appended whole (one
``write`` per batch of lines, O_APPEND) by the journal's writer only.

Reading trusts nothing: a line that is not such an object (a torn last line after a
crash) is skipped and counted. The same (term, index) may appear more than once (replay
re-records the entries it replays): the last line wins. A value is shown only when its
(term, index) is an entry of the log now, so a truncated or rolled-back suffix, or
another history, never shows values of entries that are no longer in the log. Entries
compacted out of a log without an archive cannot be checked that way; for those the
newest term recorded is kept when it is not newer than the compaction boundary's term.

Write cadence (the cost on `apply`): values are buffered in memory and written with one
``write`` per BUFFERED entries (no fsync), and written and fsynced when the journal
flushes, stages a snapshot (so a snapshot never covers entries whose values only a
replay from before it could recompute) and closes. Memory is bounded by BUFFERED rows.
The file grows by one line (about 60 bytes plus the names) per recorded entry and
re-recorded entry; it is never rewritten.

Not carried: the replica does not ship this file, and ``replay fork`` does not copy it. A
journal restored from a replica, or forked, has the values of the entries its recovery
replays after its starting snapshot and of what it applies next, not of the history
before that snapshot (the source's file still has them).
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import layout
from .errors import ReplayError

FORMAT = "replay-recorded"
VERSION = 1
HEADER = json.dumps({"format": FORMAT, "version": VERSION}).encode() + b"\n"
BUFFERED = 1024
MAX_NAME = 64


class RecordedValueError(ReplayError, ValueError):
    """A handler's result lacks a value its op records, or the value is not a real scalar
    (a Python number or a 0-d tensor, finite or NaN); names the op, the index and the field."""

    def __init__(self, op: str, index: int, field_name: str, reason: str):
        self.op, self.index, self.field = op, index, field_name
        super().__init__(f"op {op!r}, entry {index}, recorded field {field_name!r}: {reason}")


class RecordedFileError(ReplayError):
    """The recorded-scalars file exists but is not one this version reads (another format or
    a newer version)."""


def record_names(record: Any) -> tuple[str, ...]:
    """The validated names of ``@ops.op(record=...)``: () for None; a str is one name.

    ValueError for an empty or duplicate name, a name over 64 characters; TypeError when
    `record` is not a str or a sequence of str."""
    if record is None:
        return ()
    names = (record,) if isinstance(record, str) else record
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"record= must be a name or a tuple of names (str), got {record!r}")
    for n in names:
        if not n or len(n) > MAX_NAME:
            raise ValueError(f"record=: a recorded name is 1..{MAX_NAME} characters, got {n!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"record=: duplicate names in {tuple(names)!r}")
    return tuple(names)


def values_of(op: str, index: int, names: tuple[str, ...], result: Any) -> dict[str, int | float]:
    """The recorded values of one handler `result`: name -> int or float (NaN kept).

    `result` is a mapping holding every name (other keys are ignored), or, when exactly one
    name is recorded, the value itself. A value is a Python or numpy real number (not a
    bool) or a 0-d tensor (``.item()``: on CUDA that waits for the device). Infinity, a
    tensor with dimensions, a complex or bool value, or a missing name: RecordedValueError."""
    if type(result) is dict or isinstance(result, Mapping):  # (the exact-type check first: it is cheaper)
        out = {}
        for name in names:
            if name not in result:
                raise RecordedValueError(op, index, name, f"the handler returned a mapping without it "
                                         f"(keys: {sorted(map(str, result))[:8]})")
            out[name] = _scalar(op, index, name, result[name])
        return out
    if len(names) == 1:
        return {names[0]: _scalar(op, index, names[0], result)}
    raise RecordedValueError(op, index, names[0], f"the op records {len(names)} names, so its handler must return "
                             f"a mapping of them, not {type(result).__name__}")


def _scalar(op: str, index: int, name: str, value: Any) -> int | float:
    kind = type(value)
    if kind is float:  # the common cases first, without the ABC checks below
        if value - value != 0.0 and value == value:
            raise RecordedValueError(op, index, name, f"{value} is not finite (NaN is recorded; infinity is refused)")
        return value
    if kind is int:
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise RecordedValueError(op, index, name, f"a tensor of shape {tuple(value.shape)}, not 0-d "
                                     "(reduce it, e.g. .mean())")
        if value.is_complex() or value.dtype is torch.bool:
            raise RecordedValueError(op, index, name, f"a {value.dtype} tensor is not a real number")
        value = value.item()
        if type(value) is float or type(value) is int:
            return _scalar(op, index, name, value)
    elif not isinstance(value, numbers.Number) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d numpy array
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RecordedValueError(op, index, name, f"{type(value).__name__} {value!r:.60} is not a real number")
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    if math.isinf(value):
        raise RecordedValueError(op, index, name, f"{value} is not finite (NaN is recorded; infinity is refused)")
    return value


class NoRecorder:
    """No op of this journal records: every call does nothing."""

    def add(self, term: int, index: int, spec, result: Any) -> None:
        pass

    def replayed(self, term: int, index: int, spec, result: Any) -> None:
        pass

    def write(self, sync: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class Recorder(NoRecorder):
    """The journal writer's side: buffers (term, index, op, values) and appends them to the file.

    Call sequence (the journal's thread only): `add` after each live apply of a recording
    op (it validates: RecordedValueError, which the journal treats as the handler's
    failure), `replayed` for each entry recovery replays (an invalid value is skipped
    with a warning: recovery never stops for metadata), `write(sync=...)` at the
    journal's flush, snapshot and close, `close` to drop what is left (a clean close
    writes first). The file is opened on the first write."""

    def __init__(self, journal_dir: str | os.PathLike):
        self.path = layout.recorded_file(journal_dir)
        self._rows: list[tuple[int, int, str, dict]] = []
        self._fd: int | None = None
        self._unsynced = False  # rows written since the last fsync
        self._warned: set[str] = set()

    def add(self, term: int, index: int, spec, result: Any) -> None:
        if spec.record:
            self._rows.append((term, index, spec.name, values_of(spec.name, index, spec.record, result)))
            if len(self._rows) >= BUFFERED:
                self.write()

    def replayed(self, term: int, index: int, spec, result: Any) -> None:
        try:
            self.add(term, index, spec, result)
        except RecordedValueError as exc:
            if spec.name not in self._warned:  # e.g. entries logged before the op recorded anything
                self._warned.add(spec.name)
                import warnings

                warnings.warn(f"{exc}; not recorded (replay goes on: recorded values are metadata)",
                              RuntimeWarning, stacklevel=2)

    def write(self, sync: bool = False) -> None:
        """Append the buffered rows (one write); with `sync`, fsync the file too. OSError propagates."""
        if not self._rows and not (sync and self._unsynced):
            return
        if self._fd is None:
            self._fd = _open_for_append(self.path)
        if self._rows:
            data = "".join([_line(*row) for row in self._rows]).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._rows.clear()
            self._unsynced = True
        if sync:
            os.fsync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        self._rows.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(term: int, index: int, op: str, values: dict) -> str:
    # Formatted by hand (json.dumps per row costs several times more): names through the cached
    # json.dumps, an int as str, a float as repr (valid JSON once finite: checked), NaN as null.
    fields = ",".join(f"{_json_string(k)}:{'null' if v != v else repr(v)}" for k, v in values.items())
    return f'{{"t":{term},"i":{index},"op":{_json_string(op)},"v":{{{fields}}}}}\n'


_json_string = functools.lru_cache(maxsize=1024)(json.dumps)


def _open_for_append(path: Path) -> int:
    """Open (creating with its header) the file for appending; a torn last line is closed with a
    newline so the next line starts clean. RecordedFileError for another format's file."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, len(HEADER), 0)
        if (head != HEADER) if size >= len(HEADER) else not HEADER.startswith(head):
            raise RecordedFileError(f"{path}: not a {FORMAT} version {VERSION} file (first bytes {head[:48]!r})")
        if size < len(HEADER):
            os.ftruncate(fd, 0)  # a header torn by a crash: nothing after it was ever written
            os.write(fd, HEADER)
            _fsync_dir(path.parent)
        elif os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- reading


@dataclass
class Recorded:
    """What a journal's recorded file holds for its log now.

    series: name -> [(index, value)] in index order (value a float or int; NaN for null);
    ops: name -> the op(s) that recorded it; skipped: unreadable lines; stale: rows whose
    (term, index) is not an entry of the log (a truncated suffix, another history)."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    ops: dict[str, set[str]] = field(default_factory=dict)
    skipped: int = 0
    stale: int = 0

    def summary(self) -> list[dict]:
        """Per name, in name order: count, nan (how many are NaN), first and last (index and
        value), min and max over the non-NaN values (None when every value is NaN)."""
        out = []
        for name in sorted(self.series):
            points = self.series[name]
            real = [v for _, v in points if not math.isnan(v)]
            out.append({"metric": name, "ops": sorted(self.ops.get(name, ())), "count": len(points),
                        "nan": len(points) - len(real),
                        "first_index": points[0][0], "first": points[0][1],
                        "last_index": points[-1][0], "last": points[-1][1],
                        "min": min(real) if real else None, "max": max(real) if real else None})
        return out


def read_rows(path: str | os.PathLike) -> tuple[dict[tuple[int, int], tuple[str, dict]], int]:
    """({(term, index): (op, values)} of the file, the last line winning; lines skipped).

    ({}, 0) when the file is missing or holds only a torn header. RecordedFileError when
    its first line is another format or version."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}, 0
    first, sep, rest = data.partition(b"\n")
    if not sep:
        return {}, 0  # only a header being (or torn while) written
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise RecordedFileError(f"{path}: not a {FORMAT} version {VERSION} file (first line {first[:80]!r})")
    rows, skipped = {}, 0
    lines = rest.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # no newline after it: a torn last line
        skipped += 1
    for line in lines:
        row = _row(line)
        if row is None:
            skipped += 1 if line.strip() else 0
            continue
        term, index, op, values = row
        rows[(term, index)] = (op, values)
    return rows, skipped


def _row(line: bytes):
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    term, index, op, values = obj.get("t"), obj.get("i"), obj.get("op"), obj.get("v")
    if not (_count(term) and _count(index) and isinstance(op, str) and isinstance(values, dict)):
        return None
    clean = {}
    for name, value in values.items():
        if value is None:
            value = math.nan
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        clean[name] = value
    return term, index, op, clean


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_recorded(journal_dir: str | os.PathLike, log) -> Recorded:
    """The values recorded under `journal_dir` that belong to `log` (an open EventLog, readonly
    is fine) now: see the module doc for which are kept. RecordedFileError as `read_rows`."""
    rows, skipped = read_rows(layout.recorded_file(journal_dir))
    out = Recorded(skipped=skipped)
    if not rows:
        return out
    boundary = log.first_index - 1  # the compaction boundary: term_at answers from here up
    terms = _log_terms(log, max(boundary, min(i for _, i in rows)), max(i for _, i in rows))
    boundary_term = log.term_at(boundary)
    kept: dict[int, tuple[int, str, dict]] = {}
    for (term, index), (op, values) in rows.items():
        if index >= boundary:
            matches = terms.get(index) == term
        else:  # compacted without an archive: the newest term not newer than the boundary's
            matches = term <= boundary_term and (index not in kept or kept[index][0] < term)
        if not matches:
            out.stale += 1
            continue
        kept[index] = (term, op, values)
    for index in sorted(kept):
        _, op, values = kept[index]
        for name, value in values.items():
            out.series.setdefault(name, []).append((index, value))
            out.ops.setdefault(name, set()).add(op)
    return out


def _log_terms(log, lo: int, hi: int) -> dict[int, int]:
    """index -> term for the log's indexes in [lo, hi] (lo >= first_index - 1; headers only)."""
    terms = {lo: log.term_at(lo)} if lo == log.first_index - 1 else {}
    start, stop = max(lo, log.first_index), min(hi, log.last_index) + 1
    if start < stop:
        for header in log.headers(start, stop, verify=False):
            terms[header.index] = header.term
    return terms
