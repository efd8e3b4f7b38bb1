"""Prune: apply retention, then sweep the chunks and temp files nothing names any more.

Loose chunk files no retained manifest names are deleted; packs are deleted when none
of their chunks is named, and rewritten (the named chunks copied to a new pack, made
durable before the old one goes) when the named ones are less than half of their bytes
(FORMAT.md, "Reclaiming space").

Runs one at a time with saves (so never beside a save of this process), deletes
only while holding the READERS lock exclusively (so never under a reader of any
process), and never follows a symbolic link inside the store.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable

from . import retention
from .chunkfile import pread_upto
from .durable import TMP_PREFIX, fsync_dir
from .locating import ChunkLocator
from .packfile import PackEntry, PackWriter
from .safefile import UnsafeFileError, open_regular
from .errors import CorruptSnapshotError, SnapshotNotFoundError
from .known import KnownFiles
from .locks import FileLock
from .manifest import is_chunk_id, manifest_name, parse_manifest_name
from .reading import StoreReader
from .reports import PruneReport

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FANOUT = re.compile(r"^[0-9a-f]{2}$")


@dataclass(frozen=True)
class Retention:
    """How many snapshots prune keeps (see `retention.to_delete`)."""

    keep_last: int
    keep_every: int | None
    keep_oldest: bool = False
    protect: frozenset[int] = frozenset()  # indexes never deleted


def prune(reader: StoreReader, known: KnownFiles, keep: Retention, failpoint: Callable[[str], None]) -> PruneReport:
    """Find the newest snapshot that verifies, delete the manifests retention allows
    (never that one or anything newer), then every chunk no remaining manifest names
    (loose files; packs as `sweep_packs` says) and every temp file a crashed writer left. A retained manifest that does not read back
    stops the chunk sweep (its chunks cannot be told apart); a manifests/ that is a link
    or not a directory stops every deletion there."""
    layout = reader.layout
    names = reader.manifest_names()
    newest, skipped = reader.newest_verified()
    newest_key = (newest.index, newest.term) if newest else None
    doomed = {manifest_name(*k) for k in retention.to_delete(
        [parse_manifest_name(n) for n in names], newest_key, keep.keep_last, keep.keep_every,
        keep.keep_oldest, keep.protect)}
    damage = _not_a_directory(layout.manifests, "manifests/")
    if damage:  # a link to elsewhere: deleting "old manifests" there would delete others' files
        doomed = set()
    kept = [n for n in names if n not in doomed]
    lock = FileLock(layout.readers_file)
    lock.acquire(exclusive=True)
    try:
        failpoint("snapshot.prune.before_delete")
        for name in sorted(doomed):
            _unlink(layout.manifest_path(name))
        temps = [] if damage else [n for n in os.listdir(layout.manifests) if n.startswith(TMP_PREFIX)]
        for name in temps:
            _unlink(layout.manifest_path(name))
        if doomed or temps:
            fsync_dir(layout.manifests)
        failpoint("snapshot.prune.before_sweep")
        marked, unreadable = set(), None
        for name in kept:
            try:
                marked.update(c.id for c in reader.read_manifest(name).chunks)
            except (CorruptSnapshotError, SnapshotNotFoundError) as e:
                unreadable = f"manifest {name} is unreadable ({e}); no chunk was deleted"
        swept = sweep_chunks(layout.chunks, known, marked, sweep_chunks=unreadable is None and not damage)
        sweep_packs(reader, known, marked, unreadable is None and not damage, swept)
        damage += swept.damage
    finally:
        lock.release()
    if unreadable:
        log.warning("prune: %s", unreadable)
    for problem in damage:
        log.warning("prune: %s", problem)
    return PruneReport(
        deleted=tuple(n for n in names if n in doomed), kept=tuple(kept), chunks_deleted=swept.chunks_deleted,
        bytes_freed=swept.bytes_freed, temp_files_deleted=len(temps) + swept.temp_files_deleted,
        skipped=tuple(skipped), sweep_skipped=unreadable, damage=tuple(damage),
    )


def discard_after(reader: StoreReader, index: int) -> list[str]:
    """Unlink every manifest whose index is above `index` (oldest first), then fsync manifests/."""
    layout = reader.layout
    doomed = [n for n in reader.manifest_names() if parse_manifest_name(n)[0] > index]
    if not doomed or _not_a_directory(layout.manifests, "manifests/"):
        return []
    lock = FileLock(layout.readers_file)
    lock.acquire(exclusive=True)
    try:
        for name in doomed:
            _unlink(layout.manifest_path(name))
        fsync_dir(layout.manifests)
    finally:
        lock.release()
    return doomed


@dataclass
class Swept:
    """What `sweep_chunks` deleted, and what it refused to enter or delete."""

    chunks_deleted: int = 0
    bytes_freed: int = 0
    temp_files_deleted: int = 0
    damage: list[str] = field(default_factory=list)


def sweep_chunks(chunks_dir: str, known: KnownFiles, marked: set[str], sweep_chunks: bool) -> Swept:
    """Delete unmarked chunks (if `sweep_chunks`) and temp files under `chunks_dir`.

    Never follows a symbolic link: chunks/ and each fan-out directory are opened with
    O_NOFOLLOW and everything below is addressed relative to those descriptors, so a
    link (or a directory renamed into a link meanwhile) cannot lead a deletion out of
    the store. A fan-out directory that is a link or not a directory is reported, not
    entered; an entry that would be deleted but is not a regular file is reported
    and left alone."""
    out = Swept()
    try:
        top = os.open(chunks_dir, _DIR_FLAGS)
    except FileNotFoundError:
        return out
    except OSError as e:
        out.damage.append(f"chunks/ is not a directory of this store ({e.strerror}); nothing swept there")
        return out
    try:
        with os.scandir(top) as listing:
            subs = sorted((e for e in listing if _FANOUT.match(e.name)), key=lambda e: e.name)
        for sub in subs:
            if not sub.is_dir(follow_symlinks=False):
                kind = "a symbolic link" if sub.is_symlink() else "not a directory"
                out.damage.append(f"chunks/{sub.name} is {kind}; not entered")
                continue
            try:
                fd = os.open(sub.name, _DIR_FLAGS, dir_fd=top)
            except OSError as e:
                out.damage.append(f"chunks/{sub.name} cannot be opened as a directory ({e.strerror}); not entered")
                continue
            try:
                _sweep_fanout(fd, sub.name, known, marked, sweep_chunks, out)
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return out


def _sweep_fanout(fd: int, sub: str, known: KnownFiles, marked: set[str], sweep_chunks: bool, out: Swept) -> None:
    """Sweep one fan-out directory, open as `fd`; fsync it if anything was deleted."""
    changed = False
    with os.scandir(fd) as listing:
        entries = list(listing)
    for entry in entries:
        name = entry.name
        temp = name.startswith(TMP_PREFIX)
        if not (temp or (sweep_chunks and is_chunk_id(name) and name not in marked)):
            continue
        if not entry.is_file(follow_symlinks=False):
            out.damage.append(f"chunks/{sub}/{name} is not a regular file; left alone")
            continue
        size = _unlink(name, dir_fd=fd)
        if size is None:
            continue
        changed = True
        if temp:
            out.temp_files_deleted += 1
        else:
            out.chunks_deleted += 1
            out.bytes_freed += size
            known.forget(name)
    if changed:
        os.fsync(fd)


def sweep_packs(reader: StoreReader, known: KnownFiles, marked: set[str], sweep: bool, out: Swept) -> None:
    """Reclaim packs (FORMAT.md, "Reclaiming space"), if `sweep`, and delete temp files in
    packs/ in any case: a pack none of whose chunks is marked is deleted; one whose marked
    chunks hold less than half of its chunk bytes is rewritten (the marked chunks copied
    into a new pack, fsynced and named, packs/ fsynced) and then deleted. A pack whose
    index does not read is reported, and deleted only if `sweep` and every marked chunk
    has a copy in a readable pack or a loose file (a save's pack torn by a crash before
    its fsync holds nothing a snapshot needs), else left alone. packs/ that is a link or
    not a directory is reported and not entered."""
    layout, locator = reader.layout, reader.locator
    problem = _not_a_directory(layout.packs, "packs/")
    if problem:
        out.damage += problem
        return
    try:
        names = os.listdir(layout.packs)
    except FileNotFoundError:
        return
    changed = False
    for name in names:
        if name.startswith(TMP_PREFIX):
            size = _unlink(layout.pack_path(name))
            out.temp_files_deleted += size is not None
            changed |= size is not None
    # Every pack's index is read afresh (not the reader's cache): a pack is deleted or
    # rewritten only on what its file says now, and one damaged since it was cached is
    # reported rather than trusted.
    fresh = ChunkLocator(layout)
    fresh.refresh()
    damaged = fresh.damaged()
    if sweep and damaged and not _marked_elsewhere_missing(layout, fresh, marked):
        changed |= _delete_damaged_packs(layout, damaged, out)
    else:
        out.damage += [f"packs/{name} is damaged ({why}); left alone" for name, why in sorted(damaged.items())]
    if not sweep:
        if changed:
            fsync_dir(layout.packs)
        return
    for name, entries in sorted(fresh.packs().items()):
        live = [e for e in entries.values() if e.id in marked]
        dead = [e for e in entries.values() if e.id not in marked]
        if not dead:
            continue
        if live and 2 * sum(e.stored_len for e in live) >= sum(e.stored_len for e in entries.values()):
            continue  # mostly live: a rewrite would copy more than it frees
        if live and not _rewrite_pack(layout, locator, name, live, out):
            continue
        size = _unlink(layout.pack_path(name))
        locator.remove(name)
        changed = True
        if size is None:
            continue
        out.chunks_deleted += len(dead)
        out.bytes_freed += size - sum(e.stored_len for e in live)
        for e in dead:
            known.forget(e.id)
    if changed:
        fsync_dir(layout.packs)
    locator.refresh()


def _marked_elsewhere_missing(layout, fresh: ChunkLocator, marked: set[str]) -> bool:
    """True if some marked chunk is in no readable pack and has no loose file: a damaged
    pack might be where it is, so none may be deleted."""
    packed: set[str] = set()
    for entries in fresh.packs().values():
        packed.update(entries)
    return any(cid not in packed and not _is_regular(layout.chunk_path(cid)) for cid in marked)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _delete_damaged_packs(layout, damaged: dict[str, str], out: Swept) -> bool:
    """Delete the damaged packs (every marked chunk has a copy elsewhere: FORMAT.md,
    "Commit protocol", a save's pack torn by a crash before its fsync), each reported;
    True if any was deleted. One that cannot be deleted (a directory) is left alone."""
    changed = False
    for name, why in sorted(damaged.items()):
        try:
            size = _unlink(layout.pack_path(name))
        except OSError as e:
            out.damage.append(f"packs/{name} is damaged ({why}) and cannot be deleted ({e}); left alone")
            continue
        out.damage.append(f"packs/{name} was damaged ({why}) and held no chunk a retained snapshot lacks "
                          f"elsewhere; deleted")
        if size is not None:
            out.bytes_freed += size
            changed = True
    return changed


def _rewrite_pack(layout, locator, name: str, live: list[PackEntry], out: Swept) -> bool:
    """Copy the `live` chunks of pack `name`, byte for byte, into a new durable pack; False
    (reported, nothing changed) when the old pack cannot be read."""
    writer = PackWriter(layout.packs)
    try:
        fd, _ = open_regular(layout.pack_path(name), 1 << 50)
    except (OSError, UnsafeFileError) as e:
        out.damage.append(f"packs/{name} cannot be read to rewrite it ({e}); left alone")
        return False
    try:
        for e in sorted(live, key=lambda e: e.offset):
            data = pread_upto(fd, e.stored_len, e.offset)  # a short read is not the end
            if len(data) != e.stored_len:
                out.damage.append(f"packs/{name}: chunk {e.id} is cut short; the pack is left alone")
                writer.discard()
                return False
            writer.append(e.id, e.raw_len, [data])
        entries = writer.finish()
    except BaseException:
        writer.discard()
        raise
    finally:
        os.close(fd)
    fsync_dir(layout.packs)  # the new pack's name is durable before the old one goes
    locator.add(writer.name, entries)
    return True


def _unlink(path: str, dir_fd: int | None = None) -> int | None:
    """Delete a directory entry (a link is deleted, not followed); its size, or None if it
    was already gone."""
    try:
        size = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_size
        os.unlink(path, dir_fd=dir_fd)
        return size
    except FileNotFoundError:
        return None


def _not_a_directory(path: str, what: str) -> list[str]:
    """[a damage report] if `path` exists but is a symbolic link or not a directory."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return []
    if stat.S_ISDIR(mode):
        return []
    return [f"{what} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a directory'}; nothing deleted there"]
