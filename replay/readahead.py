"""Reading entries for replay: verified batches, unwrapped, their tensors on the state's device.

On a CPU state the batches are decoded on the replaying thread: decoding and handlers
both hold the GIL, so a reader thread would add hand-offs and no overlap. On an
accelerator a background thread decodes and starts the host-to-device copies while
handlers run, on the CUDA stream that was current in the replaying thread when replay
began: the handlers' kernels on that stream are then ordered after the copies, and the
caching allocator ties the copies' memory to the stream that uses it (the thread's own
default stream would be neither, for a replay run inside ``torch.cuda.stream(s)``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Iterator, NamedTuple

import torch

from .components import to_device
from .envelope import ENGINE_OPS, unwrap

_DONE = object()
BATCH = 64  # entries per batch handed to the replayer (and per queue hand-off); few, so they die young


class Prepared(NamedTuple):
    """An entry ready to apply: payload unwrapped and its tensors already on the state's device."""

    index: int
    term: int
    op: str
    version: int
    payload: dict[str, Any]
    checksum: int = 0  # the entry's chained checksum (eventlog)


def prepare(entries: list, device: torch.device | None) -> tuple[list[Prepared], BaseException | None]:
    """Prepared entries of a list of eventlog Entries, in order: (the entries before the
    first one whose envelope is malformed, that EnvelopeError or None). `device` None:
    tensors stay where the codec put them (CPU)."""
    out: list[Prepared] = []
    append = out.append
    new = tuple.__new__  # Prepared's own __new__ is a Python function: one call more per entry
    try:
        for index, term, op, stored, _, checksum in entries:
            version, payload = unwrap(index, op, stored)
            if device is not None and op not in ENGINE_OPS:
                payload = to_device(payload, device)
            append(new(Prepared, (index, term, op, version, payload, checksum)))
    except Exception as exc:  # noqa: BLE001 - handed to the consumer at this position
        return out, exc
    return out, None


def _batches(log, start: int, stop: int, device) -> Iterator[tuple[list[Prepared], BaseException | None]]:
    """(prepared batch, error or None) for [start, stop); after an error, nothing more."""
    try:
        for entries in log.entry_batches(start, stop, size=BATCH):
            prepared, error = prepare(entries, device)
            yield prepared, error
            if error is not None:
                return
    except Exception as exc:  # noqa: BLE001 - raised after the entries read before it
        yield [], exc


class ReadAhead:
    """Iterate batches of Prepared entries of `log` in [start, stop).

    `batches()` yields (entries, error): entries in order, and the exception
    (CorruptEntryError, EnvelopeError, ...) of the entry right after them, or None; after
    an error it yields nothing more. So an error surfaces at the position of the entry
    that caused it, never earlier and never dropped. On a CPU device the batches are
    read on the caller's thread; otherwise a background thread decodes up to `depth`
    batches ahead. Closing (or leaving the `with` block) stops that thread.
    """

    def __init__(self, log, start: int, stop: int, device: torch.device, depth: int = 4):
        self._log = log
        self._start, self._stop = start, stop
        self._device = None if device.type == "cpu" else device  # decoded tensors are CPU tensors already
        self._thread = None
        # The replaying thread's current stream, on which the reader thread copies (module doc).
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        if self._device is not None:
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
        try:
            with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
                for item in _batches(self._log, self._start, self._stop, self._device):
                    if not self._put(item):
                        return
                self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer at this position
            self._put(([], exc))

    def batches(self) -> Iterator[tuple[list[Prepared], BaseException | None]]:
        if self._thread is None:
            yield from _batches(self._log, self._start, self._stop, None)
            return
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            yield item
            if item[1] is not None:
                return

    def __iter__(self) -> Iterator[Prepared]:
        """The entries one by one; raises each batch's error after its entries."""
        for prepared, error in self.batches():
            yield from prepared
            if error is not None:
                raise error

    def close(self) -> None:
        """Stop the reader thread (if any) and wait for it. Idempotent."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
