"""What the store hands back: snapshot infos, listings and the reports of verify and prune.

Every type here is a frozen value: nothing a caller holds changes under it.

Size vocabulary (one set of words wherever a snapshot's size is shown: SnapshotInfo,
VerifyReport, and the `replay snapshots`, `replay stats` and `replay verify` commands):

- **logical**: the bytes of its tensors (elements x item size, summed), before
  deduplication and compression: what loading it allocates;
- **stored**: the on-disk bytes of every chunk file it uses plus its manifest file;
  a chunk shared with other snapshots counts in each (deleting this snapshot alone
  frees at most this much);
- **written**: the stored bytes this snapshot added when it was saved: its new chunk
  files and its manifest (an unchanged state costs only the manifest).

A verification also reads each distinct chunk once; how many raw bytes that was is
`VerifyReport.bytes_checked`, a measure of work, not a size of the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .manifest import Manifest


@dataclass(frozen=True)
class SnapshotInfo:
    """One committed snapshot, as its manifest describes it.

    `bytes_logical` is the total size of its tensors; `bytes_written` what the save that
    made it wrote (new chunk files plus the manifest file; an unchanged state costs only
    the manifest); `bytes_stored` the on-disk size of every chunk it uses plus the
    manifest file (chunks shared with other snapshots count in each). The manifest file's
    own size is the one read from disk (FORMAT.md, "Manifest file", field `bytes`)."""

    index: int
    term: int
    created: float
    bytes_logical: int
    bytes_written: int
    bytes_stored: int
    manifest_id: str
    meta: Any
    tensors: int
    chunks: int

    @classmethod
    def from_manifest(cls, m: Manifest) -> "SnapshotInfo":
        """The info of a decoded (or just written) manifest."""
        return cls(
            index=m.index, term=m.term, created=m.created, bytes_logical=m.bytes_logical,
            bytes_written=m.chunk_bytes_written + m.file_size, bytes_stored=m.chunk_bytes_stored + m.file_size,
            manifest_id=m.name, meta=m.meta, tensors=len(m.tensors), chunks=len(m.chunks),
        )

    def sizes(self) -> dict[str, int]:
        """{"logical", "stored", "written"}: the three sizes, in the module doc's words."""
        return {"logical": self.bytes_logical, "stored": self.bytes_stored, "written": self.bytes_written}


@dataclass(frozen=True)
class Damage:
    """One thing wrong with a snapshot: `chunk` is None when the manifest itself is bad."""

    chunk: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.chunk or 'manifest'}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of checking one snapshot: `ok` (and truth) iff `damage` is empty.

    `chunks_checked` distinct chunks were read, `bytes_checked` raw bytes of them (work
    done, not a size: module doc); `info` is the snapshot's info (its sizes in the
    module doc's words) when its manifest read back, else None."""

    manifest_id: str
    chunks_checked: int
    bytes_checked: int
    damage: tuple[Damage, ...]
    info: SnapshotInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.damage

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            sizes = "" if self.info is None else "; " + ", ".join(f"{k} {n} B" for k, n in self.info.sizes().items())
            return f"snapshot {self.manifest_id}: ok ({self.chunks_checked} chunks checked{sizes})"
        return f"snapshot {self.manifest_id}: damaged: {'; '.join(map(str, self.damage))}"

    @classmethod
    def of_manifest(cls, manifest_id: str, reason: str) -> "VerifyReport":
        """A report of a snapshot refused on its manifest, before any chunk was read."""
        return cls(manifest_id, 0, 0, (Damage(None, reason),))


@dataclass(frozen=True)
class ManifestEntry:
    """One committed manifest name in a store, whether or not the file reads back.

    `index` and `term` are parsed from the name (FORMAT.md, "Directory layout");
    `info` is the snapshot's info when the manifest passes its own checks, else None and
    `unreadable` says why (checksum, schema, a symlink or FIFO in its place, ...)."""

    name: str
    index: int
    term: int
    info: SnapshotInfo | None
    unreadable: str | None

    @property
    def key(self) -> tuple[int, int]:
        """(index, term): the order snapshots sort in."""
        return (self.index, self.term)


@dataclass(frozen=True)
class PruneReport:
    """What `prune` did. `skipped` holds the reports of damaged snapshots it passed over
    while looking for the newest verified one; `sweep_skipped` says why no chunk was
    deleted, if none could safely be (a retained manifest was unreadable); `damage` names
    what the sweep refused to enter or delete (a chunk directory that is a symbolic link,
    an entry that is not a regular file), each left untouched."""

    deleted: tuple[str, ...]
    kept: tuple[str, ...]
    chunks_deleted: int
    bytes_freed: int
    temp_files_deleted: int
    skipped: tuple[VerifyReport, ...]
    sweep_skipped: str | None = None
    damage: tuple[str, ...] = ()
