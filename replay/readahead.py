"""Read-ahead for replay: a background thread decodes entries and moves their tensors while handlers run."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, NamedTuple

import torch

from .components import to_device
from .envelope import ENGINE_OPS, unwrap

_DONE = object()
BATCH = 32  # entries per queue hand-off


class Prepared(NamedTuple):
    """An entry ready to apply: payload unwrapped and its tensors already on the state's device."""

    index: int
    term: int
    op: str
    version: int
    payload: dict[str, Any]


class ReadAhead:
    """Iterate Prepared entries of `log` in [start, stop), decoded up to `depth` batches ahead.

    Errors (CorruptEntryError, EnvelopeError, ...) are raised by the iterator at the
    position of the entry that caused them, never earlier and never dropped. Closing
    (or leaving the `with` block) stops the thread.
    """

    def __init__(self, log, start: int, stop: int, device: torch.device, depth: int = 4):
        self._log = log
        self._start, self._stop = start, stop
        self._device = device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay-readahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        # Entries travel in batches: a queue hand-off per entry costs more than decoding
        # a small entry, and on CPU (one GIL) the hand-off is pure overhead.
        batch: list = []
        try:
            for entry in self._log.entries(self._start, self._stop):
                version, payload = unwrap(entry.index, entry.op, entry.payload)
                if entry.op not in ENGINE_OPS:
                    payload = to_device(payload, self._device)
                batch.append(Prepared(entry.index, entry.term, entry.op, version, payload))
                if len(batch) >= BATCH:
                    if not self._put(batch):
                        return
                    batch = []
            batch.append(_DONE)
            self._put(batch)
        except BaseException as exc:  # handed to the consumer at this position
            batch.append(exc)
            self._put(batch)

    def __iter__(self) -> Iterator[Prepared]:
        while True:
            for item in self._queue.get():
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

    def close(self) -> None:
        """Stop the reader thread and wait for it. Idempotent."""
        self._stopping.set()
        self._thread.join()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
