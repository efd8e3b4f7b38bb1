"""Filling a load's tensors from its chunks on the store's worker threads.

`StoreReader.read_tensors` decides where each chunk's bytes go (a live tensor, or fresh
memory) and hands the work here: `chunk_uses` maps every chunk the load needs to the
tensor ranges it fills, and `fill` reads each chunk once through the reader's checked
`read_chunk` (every copy tried, the hash checked) on a few threads that pull chunks from
one queue. A chunk that is exactly one CPU tensor's range is decoded straight into it;
one shared by several tensors, or bound for a GPU, goes through the thread's reusable
buffer (page-locked for a GPU) and is copied out.

Each thread keeps the packs it reads open until the load ends (`ChunkCodec.packs_kept_open`):
a pack holds many chunks, and opening and checking it once per chunk costs three system
calls. Holding them is safe because the caller holds the store's shared lock, so a prune
deletes no pack under it (and an open file keeps its bytes anyway: packs are immutable).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from .chunkfile import ChunkCodec
from .manifest import ChunkRef, Manifest
from .pool import WorkerPool
from .tensorbytes import buffer, byte_view

# (offset in the chunk, length, tensor position, offset in that tensor's bytes)
Use = tuple[int, int, int, int]
# read_chunk(snapshot name, ref, out): decode and check chunk `ref` into `out`, a flat
# uint8 tensor or a writable memoryview (StoreReader.read_chunk).
ReadChunk = Callable[[str, ChunkRef, "torch.Tensor | memoryview"], None]


def chunk_uses(manifest: Manifest, wanted: list[int]) -> dict[int, list[Use]]:
    """Chunk number -> the ranges of the `wanted` tensors it fills, for every chunk they use."""
    uses: dict[int, list[Use]] = defaultdict(list)
    for t in wanted:
        at = 0
        for c, off, n in manifest.tensors[t].segments:
            uses[c].append((off, n, t, at))
            at += n
    return uses


def fill(manifest: Manifest, uses: dict[int, list[Use]], outs: list[torch.Tensor | None], read_chunk: ReadChunk,
         codec: ChunkCodec, pool: WorkerPool) -> None:
    """Decode every chunk of `uses` into the bytes of the tensors `outs` (tensor position
    -> a contiguous tensor, CPU or CUDA, or None where no chunk goes) on the pool's
    threads, in chunk order, each thread keeping its packs open
    (`ChunkCodec.packs_kept_open`); the first error (read_chunk's CorruptSnapshotError, an
    allocation failure) stops the others and is raised once they have stopped."""
    name = manifest.name
    # Byte views of the CPU tensors, made once per load: slicing a memoryview per chunk
    # costs a tenth of slicing a tensor and wrapping it again.
    views = [buffer(o) if o is not None and o.is_cpu else None for o in outs]
    # A GPU tensor (an out without a byte view: `inplace` admits CPU and CUDA tensors only)
    # is written on the stream current in the caller's thread for its device, not on the
    # worker thread's own (the device's default stream): so each copy is ordered after the
    # work the caller queued there before the load, which may still read or write that
    # tensor, as a copy made on the caller's own thread would be.
    streams = {o.device: torch.cuda.current_stream(o.device) for o, v in zip(outs, views) if v is None and o is not None}

    def one(c: int, _) -> None:
        ref, targets = manifest.chunks[c], uses[c]
        off, n, t, at = targets[0]
        view = views[t]
        if len(targets) == 1 and off == 0 and n == ref.raw_len and view is not None:
            # Straight into the tensor, read and hashed piece by piece (ChunkCodec.read).
            read_chunk(name, ref, view if at == 0 and n == len(view) else view[at:at + n])
            return
        # Several tensors share the chunk, or it goes to a GPU: decode and check it in
        # this thread's buffer (page-locked for a GPU), then copy the pieces out. A copy
        # from the host is synchronous, so the buffer is free again after it.
        pinned = any(views[t] is None for _, _, t, _ in targets)  # a CUDA tensor
        scratch = codec.scratch(ref.raw_len, "pinned" if pinned else "chunk", pinned=pinned)
        read_chunk(name, ref, scratch)
        source = buffer(scratch)
        for off, n, t, at in targets:
            if views[t] is None:
                with torch.cuda.stream(streams[outs[t].device]):
                    byte_view(outs[t])[at:at + n].copy_(scratch[off:off + n])
            else:  # a plain memory copy: many small tensors share a chunk, and torch's
                views[t][at:at + n] = source[off:off + n]  # slice + copy_ cost ~10 us each

    pool.drain(sorted(uses), one, pool.workers, codec.packs_kept_open)
