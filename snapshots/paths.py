"""Where things live in a store directory (FORMAT.md, "Directory layout").

Paths are built only from validated names (`is_chunk_id`, `manifest_name`), so nothing
read from a manifest can address a file outside the store.
"""

from __future__ import annotations

import os

from .durable import fsync_dir
from .manifest import is_chunk_id


class StoreLayout:
    """The files of one store directory (FORMAT.md, "Directory layout")."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.chunks = os.path.join(self.root, "chunks")
        self.manifests = os.path.join(self.root, "manifests")
        self.lock_file = os.path.join(self.root, "LOCK")
        self.readers_file = os.path.join(self.root, "READERS")

    def chunk_dir(self, cid: str) -> str:
        return os.path.join(self.chunks, cid[:2])

    def chunk_path(self, cid: str) -> str:
        if not is_chunk_id(cid):
            raise ValueError(f"not a chunk id: {cid!r}")
        return os.path.join(self.chunks, cid[:2], cid)

    def manifest_path(self, name: str) -> str:
        return os.path.join(self.manifests, name)

    def create(self) -> None:
        """Create every directory (the 256 chunk fan-out directories included) and make
        their names durable. Idempotent."""
        made = False
        for path in (self.root, self.chunks, self.manifests):
            made |= _mkdir(path)
        fanout = [format(i, "02x") for i in range(256)]
        made_chunk_dirs = [_mkdir(os.path.join(self.chunks, d)) for d in fanout]
        if made or any(made_chunk_dirs):
            fsync_dir(self.chunks)
            fsync_dir(self.root)
            fsync_dir(os.path.dirname(self.root))


def _mkdir(path: str) -> bool:
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False
