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
        self.packs = os.path.join(self.root, "packs")
        self.manifests = os.path.join(self.root, "manifests")
        self.lock_file = os.path.join(self.root, "LOCK")
        self.readers_file = os.path.join(self.root, "READERS")

    def chunk_dir(self, cid: str) -> str:
        return os.path.join(self.chunks, cid[:2])

    def chunk_path(self, cid: str) -> str:
        if not is_chunk_id(cid):
            raise ValueError(f"not a chunk id: {cid!r}")
        return os.path.join(self.chunks, cid[:2], cid)

    def pack_path(self, name: str) -> str:
        return os.path.join(self.packs, name)

    def manifest_path(self, name: str) -> str:
        return os.path.join(self.manifests, name)

    def create(self) -> None:
        """Create the store directory and its manifests/ and make their names durable.
        Idempotent. The other directories (packs/, chunks/ab) are created when first
        written to (`ensure_dir`), so opening a new store costs two mkdirs, not 258."""
        made = _mkdir(self.root)
        if _mkdir(self.manifests) or made:
            fsync_dir(self.root)
            fsync_dir(os.path.dirname(self.root))

    def ensure_dir(self, path: str, sync: bool = True) -> set[str]:
        """Create `path` (packs/, chunks/ or chunks/ab under this store) if missing, with
        its parents up to the store directory. With `sync` each creation is made durable
        (its parent fsynced) before this returns, and the result is empty; without, the
        parents to fsync before anything inside is relied on are returned (an importer
        creating many directories fsyncs each parent once). Idempotent; a racing creator
        is fine."""
        if os.path.isdir(path):
            return set()
        parent = os.path.dirname(path)
        todo = self.ensure_dir(parent, sync) if parent != self.root else set()
        if _mkdir(path):
            if sync:
                fsync_dir(parent)
            else:
                todo.add(parent)
        return todo


def _mkdir(path: str) -> bool:
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False
