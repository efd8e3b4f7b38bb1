"""Cutting tensor bytes into chunks (writer policy; FORMAT.md only fixes what readers see).

A tensor of at least `chunk_size // 16` bytes is split into `chunk_size` pieces that are
views of its bytes (no copy). Smaller tensors are packed, in state order and grouped by
byte-group width, into packs of up to `chunk_size // 4` bytes, so a model's many small
biases and norms cost a few files rather than hundreds, while one changed small tensor
rewrites at most one small pack. Cuts are deterministic in the shapes, so an unchanged
tensor produces the same chunks, and the same ids, in every save.

Packs do not span components: a new pack starts where the tensors' `groups` change (the
store passes each tensor's top-level component when that component is a container, a
model's or an optimizer's state dict), so loading one component (`only=`) reads none of
another's chunks. Bare top-level tensors form no group and pack together as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PlannedChunk:
    """The raw bytes of one chunk: one view, or several small tensors to concatenate."""

    parts: list[torch.Tensor]
    width: int

    @property
    def nbytes(self) -> int:
        return sum(p.numel() for p in self.parts)

    def materialize(self) -> torch.Tensor:
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)


def plan(views: list[torch.Tensor], widths: list[int], chunk_size: int, groups: list | None = None):
    """Chunks for tensors given as flat uint8 views, and per tensor its segments
    `(planned_chunk_no, offset, length)`. `groups[i]` (optional) is tensor i's group: a
    pack holds tensors of one group only."""
    small_limit = max(chunk_size // 16, 1)
    pack_limit = max(chunk_size // 4, 1)
    chunks: list[PlannedChunk] = []
    segments: list[list[tuple[int, int, int]]] = [[] for _ in views]
    open_packs: dict[int, int] = {}  # width -> chunk number of the pack being filled
    group = None
    for i, (raw, width) in enumerate(zip(views, widths)):
        n = raw.numel()
        if n == 0:
            continue
        if groups is not None and groups[i] != group:
            group = groups[i]
            open_packs.clear()
        if n >= small_limit:
            # Piece boundaries are multiples of chunk_size, itself a multiple of every width.
            for start in range(0, n, chunk_size):
                piece = raw[start:start + chunk_size]
                segments[i].append((len(chunks), 0, piece.numel()))
                chunks.append(PlannedChunk([piece], width))
            continue
        pack_no = open_packs.get(width)
        if pack_no is None or chunks[pack_no].nbytes + n > pack_limit:
            pack_no = open_packs[width] = len(chunks)
            chunks.append(PlannedChunk([], width))
        pack = chunks[pack_no]
        segments[i].append((pack_no, pack.nbytes, n))
        pack.parts.append(raw)
    return chunks, segments
