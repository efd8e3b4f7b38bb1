"""Staging: getting a consistent host copy of tensor leaves before the caller moves on.

`Stager.stage` copies tensors into a reusable host arena and returns flat uint8 views of
their bytes. For CUDA tensors the arena is pinned, the copies run on a side stream that
first waits for the caller's current stream (so they see every update enqueued before
the save), and the caller's stream then waits on an event recorded after the copies (so
no update enqueued after the save can run before the copy has read the old values). The
host returns at once; the background writer waits on the event before reading the bytes.

Arenas are kept for reuse (two at most), so steady-state saves of the same state
allocate nothing. An arena belongs to one save until that save releases it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from .tensorbytes import byte_view

_ALIGN = 64  # bytes; enough for every dtype's alignment (complex128 needs 16)
_KEEP_FREE = 2


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass
class Staged:
    """Host bytes of staged tensors, in leaf order. `wait()` before reading them."""

    views: list[torch.Tensor]
    arena: torch.Tensor | None
    events: list = field(default_factory=list)
    stager: "Stager | None" = None  # gets the arena back on release

    def wait(self) -> None:
        for event in self.events:
            event.synchronize()
        self.events = []

    def release(self) -> None:
        """Give the arena back for reuse; the views must not be used afterwards. An arena
        whose copies were not all waited for (`wait` raised, or was never called) is
        dropped instead: a copy may still be writing into it, and the next save must not
        stage into the same bytes."""
        if self.stager is not None and self.arena is not None and not self.events:
            self.stager.give_back(self.arena)
        self.arena = None
        self.stager = None


def _zero_copy_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.is_contiguous() and not t.is_conj() and not t.is_neg()


class Stager:
    """Owns the reusable host arenas of one store."""

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self._side_streams: dict = {}
        self.arenas_allocated = 0  # observable so tests can check reuse

    def stage(self, tensors: list[torch.Tensor], copy_all: bool) -> Staged:
        """Host byte views of `tensors`. With `copy_all` every tensor is copied (the caller
        may mutate the originals as soon as this returns); without it, contiguous CPU
        tensors are used in place and only the rest are copied (for a blocking save)."""
        needs_copy = [copy_all or not _zero_copy_ok(t) for t in tensors]
        total = sum(_aligned(t.numel() * t.element_size()) for t, c in zip(tensors, needs_copy) if c)
        on_cuda = any(t.device.type == "cuda" for t in tensors)
        arena = self._take(total, pinned=on_cuda and torch.cuda.is_available()) if total else None
        views: list[torch.Tensor] = []
        cuda_copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        offset = 0
        for t, copy in zip(tensors, needs_copy):
            if not copy:
                views.append(byte_view(t))
                continue
            nbytes = t.numel() * t.element_size()
            if nbytes == 0:
                # No bytes to copy, and no arena at all when every copied tensor is empty.
                views.append(torch.empty(0, dtype=torch.uint8))
                continue
            raw = arena[offset:offset + nbytes]
            offset += _aligned(nbytes)
            views.append(raw)
            dst = raw.view(t.dtype).view(t.shape)
            if t.device.type == "cuda":
                cuda_copies.append((dst, t))
            else:
                # copy_ resolves strides, conj and neg bits, and other devices (via host).
                dst.copy_(t)
        events = self._copy_from_cuda(cuda_copies) if cuda_copies else []
        return Staged(views=views, arena=arena, events=events, stager=self)

    def _copy_from_cuda(self, copies: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
        by_device: dict = {}
        for dst, src in copies:
            by_device.setdefault(src.device, []).append((dst, src))
        events = []
        for device, pairs in by_device.items():
            caller = torch.cuda.current_stream(device)
            side = self._side_streams.get(device)
            if side is None:
                side = self._side_streams[device] = torch.cuda.Stream(device=device)
            side.wait_stream(caller)  # see every update enqueued before the save
            with torch.cuda.stream(side):
                for dst, src in pairs:
                    dst.copy_(src, non_blocking=True)
                    src.record_stream(side)  # the allocator must not reuse src before the copy
                event = torch.cuda.Event()
                event.record(side)
            caller.wait_event(event)  # later in-place updates wait for the copy, not the host
            events.append(event)
        return events

    def _take(self, nbytes: int, pinned: bool) -> torch.Tensor:
        with self._lock:
            fits = [a for a in self._free if a.numel() >= nbytes and a.is_pinned() == pinned]
            if fits:
                arena = min(fits, key=lambda a: a.numel())
                self._free.remove(arena)
                return arena
        self.arenas_allocated += 1
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)

    def give_back(self, arena: torch.Tensor) -> None:
        """Keep `arena` for a later save (the largest few are kept)."""
        with self._lock:
            self._free.append(arena)
            self._free.sort(key=lambda a: a.numel(), reverse=True)
            del self._free[_KEEP_FREE:]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
