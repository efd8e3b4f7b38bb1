"""Where a store's chunks are on disk, whatever their form, for tests that read or damage
one chunk's bytes (FORMAT.md, "Finding a chunk").

A chunk is either a loose file (`chunks/ab/<id>`, the whole file) or a byte range of a
pack (`packs/<digest>.pack`). Tests that are not about one form find a chunk through
`snapshots.locating.ChunkLocator` (the readers' own lookup) and act on its `Region`, so
they hold for stores written with either `packs=` setting. A test that is about the
loose form opens its store with ``packs=False`` and uses paths directly.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from snapshots.locating import ChunkLocator
from snapshots.paths import StoreLayout


class Region(NamedTuple):
    """Bytes [offset, offset + size) of the file at `path` hold chunk `cid`'s chunk file;
    `pack` is the pack's name, None for a loose file (offset 0, size the file's)."""

    cid: str
    path: str
    offset: int
    size: int
    pack: str | None

    def read(self) -> bytes:
        """The chunk file's bytes, exactly `size` of them."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def flip(self, at: int, mask: int = 0xFF) -> None:
        """XOR byte `at` of the chunk file (0 <= at < size) with `mask`, in place."""
        assert 0 <= at < self.size, f"byte {at} is outside chunk {self.cid}'s {self.size} bytes"
        os.chmod(self.path, os.stat(self.path).st_mode | 0o200)  # stores may write files read-only
        with open(self.path, "r+b") as f:
            f.seek(self.offset + at)
            byte = f.read(1)[0]
            f.seek(self.offset + at)
            f.write(bytes([byte ^ mask]))


def regions(root, cid: str) -> list[Region]:
    """Every file region that holds chunk `cid` in the store at `root` (packed copies
    first, newest pack first, then the loose file if it exists); [] when none does."""
    layout = StoreLayout(os.fspath(root))
    out = []
    for copy in ChunkLocator(layout).copies(cid):
        if copy.pack is not None:
            out.append(Region(cid, copy.path, copy.offset, copy.stored_len, copy.pack))
        elif os.path.lexists(copy.path):
            out.append(Region(cid, copy.path, 0, os.lstat(copy.path).st_size, None))
    return out


def region(root, cid: str) -> Region:
    """The one region holding chunk `cid` (AssertionError if it is in none or several)."""
    found = regions(root, cid)
    assert len(found) == 1, f"chunk {cid} is in {len(found)} files of {root}: {found}"
    return found[0]


def chunk_ids(root) -> set[str]:
    """Every chunk id some file of the store at `root` holds (loose or packed)."""
    return {r.cid for r in all_regions(root)}


def all_regions(root) -> list[Region]:
    """Every copy of every chunk in the store at `root`: loose files, then packed ranges."""
    layout = StoreLayout(os.fspath(root))
    out = []
    for directory, _, names in os.walk(layout.chunks):
        for name in names:
            if not name.startswith("."):
                path = os.path.join(directory, name)
                out.append(Region(name, path, 0, os.lstat(path).st_size, None))
    locator = ChunkLocator(layout)
    locator.refresh()
    for pack, entries in sorted(locator.packs().items()):
        for cid, e in entries.items():
            out.append(Region(cid, layout.pack_path(pack), e.offset, e.stored_len, pack))
    return out


def chunk_files(root) -> dict[str, int]:
    """Every file that holds chunks (loose chunk files and packs), path -> mtime in ns:
    equal before and after a save means the save rewrote no chunk file."""
    layout = StoreLayout(os.fspath(root))
    out = {}
    for top in (layout.chunks, layout.packs):
        for directory, _, names in os.walk(top):
            for name in names:
                if not name.startswith("."):
                    path = os.path.join(directory, name)
                    out[path] = os.stat(path).st_mtime_ns
    return out
