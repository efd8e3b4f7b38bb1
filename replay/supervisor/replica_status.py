"""The replica's lag as a journal publishes it for ``replay run --metrics`` (no replica store opened).

A supervised journal with a replica writes ``replica-a<attempt>-p<pid>.json`` in the
supervisor's records (layout.py) every PUBLISH_EVERY seconds from a thread of its own, and
once more when it closes (after the last shipping round), so the apply path pays nothing.
The supervisor reads it; it never opens the replica's store (credentials, network).

Format, version 1: one JSON object, replaced by rename (a reader sees the old file or
the new one)::

    {"format": 1, "pid": 4242, "time": 1765100000.5, "url": "s3://bucket/run1",
     "index": 1200, "settled": 1260, "lag_entries": 60, "lag_seconds": 1.4, "fenced": false,
     "last_error": null}

``index``, ``settled``, ``lag_entries``, ``lag_seconds``, ``fenced`` and ``last_error``
are the journal's ReplicaStatus (replay/replica/status.py) at ``time`` (wall clock).
No fsync: it is liveness, like the heartbeat; a crash may leave an older one.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..jsonfile import JsonFileError, read_small

PUBLISH_EVERY = 1.0
VERSION = 1
MAX_BYTES = 16 * 1024


class ReplicaStatusWriter:
    """Publishes `status()` (a ReplicaStatus, or None: nothing written) to `path` every
    `every` seconds from a daemon thread until `close`, which writes a last one. No method
    raises: a failed write is retried at the next tick (reporting must never stop training)."""

    def __init__(self, path: Path, status: Callable[[], object], every: float = PUBLISH_EVERY):
        self.path = path
        self._status = status
        self._every = every
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="replay-replica-status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.publish()

    def publish(self) -> None:
        try:
            status = self._status()
            if status is None:
                return
            document = {"format": VERSION, "pid": self._pid, "time": time.time(), "url": status.url,
                        "index": status.index, "settled": status.settled, "lag_entries": status.lag_entries,
                        "lag_seconds": float(status.lag_seconds), "fenced": bool(status.fenced),
                        "last_error": status.last_error}
            temp = self.path.with_name(f".{self.path.name}.tmp")
            temp.write_text(json.dumps(document, allow_nan=False))
            os.replace(temp, self.path)
        except Exception:  # noqa: BLE001 - a closed journal, a full disk: the next tick tries again
            pass

    def close(self) -> None:
        """Stop the thread and publish the final status (the caller's thread; in the writer's process only)."""
        if os.getpid() != self._pid or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self.publish()


def read(path: Path) -> dict | None:
    """The status in `path`, checked; None when missing or not a version-1 replica status."""
    try:
        record = read_small(path, MAX_BYTES)
    except JsonFileError:
        return None
    if not isinstance(record, dict) or record.get("format") != VERSION:
        return None
    for key in ("index", "settled", "lag_entries"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
    for key in ("lag_seconds", "time"):
        value = record.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
    if not isinstance(record.get("fenced"), bool):
        return None
    return record
