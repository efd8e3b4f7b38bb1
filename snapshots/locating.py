"""Finding a chunk by id: which files hold it, and where (FORMAT.md, "Finding a chunk").

`ChunkLocator` caches the checked indexes of a store's packs (a pack never changes once
named) and answers `copies(cid)`: the packed copies it knows, then the loose file's
path. The cache is filled on first use and re-listed by `refresh()`, which a reader calls
when no copy of a chunk was where the cache said (a new pack of another process, a pack
a prune deleted or rewrote, or a damaged pack's name now holding a good pack). The
writer adds its own packs as it names them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from threading import Lock
from typing import Optional

from .packfile import PackDecodeError, PackEntry, is_pack_name, read_index
from .paths import StoreLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Copy:
    """One file holding a chunk: bytes [offset, offset + stored_len) of `path` for a
    packed copy (`pack` its name); the whole file for a loose one (offset None, and
    stored_len None: the file's own size, checked by the reader)."""

    path: str
    directory: str  # whose entry makes `path` durable
    pack: str | None = None
    offset: int | None = None
    stored_len: int | None = None

    def where(self) -> str:
        """For damage reasons: "in pack P at offset O", or "" for a loose file."""
        return f" (in pack {self.pack} at offset {self.offset})" if self.pack else ""


class ChunkLocator:
    """The packs of one store directory and the chunks in them. Thread-safe."""

    def __init__(self, layout: StoreLayout):
        self.layout = layout
        self._lock = Lock()
        self._listing = Lock()  # one refresh at a time: threads that miss at once read a pack once
        self._packs: dict[str, dict[str, PackEntry]] = {}  # pack name -> its index
        self._where: dict[str, list[str]] = {}  # chunk id -> names of the packs holding it
        # pack name -> (why its index does not read, its file's identity then)
        self._damaged: dict[str, tuple[str, Optional[tuple]]] = {}
        self._listed = False

    def copies(self, cid: str) -> list[Copy]:
        """Every copy of chunk `cid` the cache knows in packs (newest pack first), then its
        loose path (which may not exist: the reader's open says). Lists `packs/` the first
        time."""
        if not self._listed:
            self.refresh()
        with self._lock:
            packs = list(self._where.get(cid, ()))
            entries = [(name, self._packs[name][cid]) for name in reversed(packs)]
        out = [Copy(os.path.join(self.layout.packs, name), self.layout.packs, name, e.offset, e.stored_len)
               for name, e in entries]
        out.append(Copy(self.layout.chunk_path(cid), self.layout.chunk_dir(cid)))
        return out

    def damaged(self) -> dict[str, str]:
        """Packs whose index did not read at the last listing: name -> why."""
        with self._lock:
            return {name: why for name, (why, _) in self._damaged.items()}

    def packs(self) -> dict[str, dict[str, PackEntry]]:
        """Every readable pack at the last listing (call `refresh` first for a fresh view)."""
        with self._lock:
            return dict(self._packs)

    def refresh(self) -> None:
        """List `packs/` again: read the index of every pack not yet known, forget the
        packs that are gone. A pack whose index fails a check is remembered as damaged
        (logged once) and its chunks are not found through it, until its file changes
        (inode, size or times): then it is read again, since one name may come to hold a
        good pack (a save's pack is named before its fsync; when a crash tore it, a later
        save of the same chunks writes them under the same name: FORMAT.md, "Finding a
        chunk"). One refresh runs at a time; a thread that waited for another's reads
        only what changed since."""
        with self._listing:
            try:
                names = {n for n in os.listdir(self.layout.packs) if is_pack_name(n)}
            except (FileNotFoundError, NotADirectoryError):
                names = set()
            with self._lock:
                known = set(self._packs)
                damaged_as = {name: was for name, (_, was) in self._damaged.items()}
            changed = {n for n, was in damaged_as.items() if n in names and _identity(self._path(n)) != was}
            fresh: dict[str, dict[str, PackEntry]] = {}
            damaged: dict[str, tuple[str, Optional[tuple]]] = {}
            for name in sorted(names - known - (set(damaged_as) - changed)):
                identity = _identity(self._path(name))  # before the read: a change during it shows next time
                try:
                    fresh[name] = read_index(self._path(name))
                except FileNotFoundError:
                    continue
                except PackDecodeError as e:
                    why = e.reason if e.chunk is None else f"chunk {e.chunk}: {e.reason}"
                    log.warning("pack %s in %s is damaged: %s", name, self.layout.root, why)
                    damaged[name] = why, identity
                except OSError as e:
                    damaged[name] = f"unreadable: {e}", identity
            with self._lock:
                for name in ((set(self._packs) | set(self._damaged)) - names) | changed:
                    self._drop(name)
                for name, entries in fresh.items():
                    self._add(name, entries)
                self._damaged.update(damaged)
                self._listed = True

    def _path(self, name: str) -> str:
        return os.path.join(self.layout.packs, name)

    def add(self, name: str, entries: list[PackEntry]) -> None:
        """Record a pack this process just named (its entries as written)."""
        with self._lock:
            self._add(name, {e.id: e for e in entries})

    def remove(self, name: str) -> None:
        """Forget a pack this process deleted."""
        with self._lock:
            self._drop(name)

    def _add(self, name: str, entries: dict[str, PackEntry]) -> None:
        if name in self._packs:
            return
        self._packs[name] = entries
        for cid in entries:
            self._where.setdefault(cid, []).append(name)

    def _drop(self, name: str) -> None:
        self._damaged.pop(name, None)
        entries = self._packs.pop(name, None) or {}
        for cid in entries:
            holders = self._where.get(cid, [])
            if name in holders:
                holders.remove(name)
            if not holders:
                self._where.pop(cid, None)


def _identity(path: str) -> Optional[tuple]:
    """What changes when a file is replaced or written: inode, size, times (None: gone)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
