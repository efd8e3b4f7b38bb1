"""Crash records (written by the journal) and attempt records (written by the supervisor).

A crash record, ``crash-a<attempt>-p<pid>.json``, is written durably (replay.jsonfile)
*before* the exception that caused it propagates, so the supervisor knows the failing
entry without parsing stderr. Fields: ``phase`` ("opening", "recovering", "applying"),
``op`` and ``index`` of the entry (null when none), ``type`` (the exception's qualified
class name), ``message``, ``traceback`` (at most 32 KiB), ``oom`` (a CUDA or torch
OutOfMemoryError), ``cascade`` (the exception says another rank is gone: not this
process's own failure), ``handler`` (phase applying: the handler raised or refused its
payload, rather than the journal: a fenced replica, a failed disk), ``pid``. The journal removes it when its next apply succeeds: a job
that catches the exception and goes on leaves no crash.

``attempts.jsonl`` holds one JSON object per line, one per finished attempt, with
exactly the fields of `ATTEMPT_FIELDS`; each line is appended and fsynced. Every record
is read back as untrusted input: a line that is not such an object (a torn last line
after a crash) is skipped and counted, never fatal.
"""

from __future__ import annotations

import os
import traceback as traceback_module
from pathlib import Path
from typing import Any

from ..jsonfile import JsonFileError, parse, read_small, write_durably
from .layout import ATTEMPTS

ATTEMPT_FIELDS = ("attempt", "started", "ended", "class", "exit", "signal", "index_start", "index_end",
                  "decision", "entry", "message", "dump")
MAX_CRASH_BYTES = 256 * 1024
MAX_TRACEBACK = 32 * 1024
MAX_ATTEMPTS_BYTES = 64 * 2**20
PHASES = ("opening", "recovering", "applying")


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error of torch (CUDA or another device's allocator)."""
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


_PEER_GONE = ("by peer", "Connection reset", "Connection closed", "Broken pipe")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) says another rank is gone: the
    cascade of a failure elsewhere (replay's RankFailureError, torch.distributed's
    DistError, gloo's "Connection reset/closed by peer"), which the supervisor does not blame."""
    seen = 0
    while exc is not None and seen < 8:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"RankFailureError", "DistError", "DistNetworkError"} or any(p in str(exc) for p in _PEER_GONE):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_crash(path: Path, *, phase: str, op: str | None, index: int | None, exc: BaseException,
                handler: bool = True) -> None:
    """Write the crash record for `exc` durably at `path` (the caller ignores OSError: a full
    disk must not hide the user's exception)."""
    text = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    write_durably(path, {
        "phase": phase, "op": op, "index": index, "pid": os.getpid(),
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)[:4096],
        "traceback": text[-MAX_TRACEBACK:], "oom": is_oom(exc), "cascade": is_peer_failure(exc),
        "handler": handler,
    })


def read_crash(path: Path) -> dict | None:
    """The crash record at `path`, checked; None when missing or not a crash record."""
    try:
        record = read_small(path, MAX_CRASH_BYTES)
    except JsonFileError:
        return None
    if not isinstance(record, dict) or record.get("phase") not in PHASES:
        return None
    op, index = record.get("op"), record.get("index")
    if op is not None and not isinstance(op, str) or index is not None and (
            not isinstance(index, int) or isinstance(index, bool)):
        return None
    for key in ("type", "message", "traceback"):
        if not isinstance(record.get(key), str):
            return None
    record["oom"] = record.get("oom") is True
    record["cascade"] = record.get("cascade") is True
    record["handler"] = record.get("handler") is not False
    return record


def append_attempt(records: Path, attempt: dict[str, Any]) -> None:
    """Append one attempt (exactly ATTEMPT_FIELDS) to attempts.jsonl and fsync it."""
    if set(attempt) != set(ATTEMPT_FIELDS):
        raise ValueError(f"an attempt record has exactly the fields {ATTEMPT_FIELDS}, got {sorted(attempt)}")
    import json

    line = json.dumps({k: attempt[k] for k in ATTEMPT_FIELDS}, allow_nan=False).encode() + b"\n"
    records.mkdir(parents=True, exist_ok=True)
    path = records / ATTEMPTS
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        directory = os.open(records, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read_attempts(records: Path) -> tuple[list[dict], int]:
    """(the attempts recorded under `records`, oldest first; how many lines were skipped).

    JsonFileError when attempts.jsonl is not a regular file or is larger than 64 MiB."""
    path = records / ATTEMPTS
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise JsonFileError(f"cannot be opened as a file: {exc.strerror or exc}") from None
    try:
        import stat

        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise JsonFileError("is not a regular file")
        if info.st_size > MAX_ATTEMPTS_BYTES:
            raise JsonFileError(f"larger than {MAX_ATTEMPTS_BYTES} bytes")
        data = os.pread(fd, info.st_size, 0)
    finally:
        os.close(fd)
    out, skipped = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = parse(line)
        except JsonFileError:
            skipped += 1
            continue
        if not isinstance(record, dict) or set(record) != set(ATTEMPT_FIELDS):
            skipped += 1
            continue
        out.append(record)
    return out, skipped
