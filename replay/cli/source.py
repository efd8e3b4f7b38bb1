"""Opening what the user pointed at, readonly: a journal directory (log/ + snapshots/) or a bare log.

Nothing here writes: the log is opened with ``readonly=True`` (no lock, no term bump, short
read transactions), and a SnapshotStore only reads until someone calls save or prune.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import snapshots
from eventlog import EventLog
from replay.audit import locate
from replay import layout as paths
from replay.ranks import layout

from .errors import CliError


@dataclass
class Source:
    """An opened journal: `log` (readonly EventLog), `store` (SnapshotStore or None for a bare log)."""

    root: Path
    log: EventLog
    store: snapshots.SnapshotStore | None

    @property
    def log_path(self) -> Path:
        return self.log.path

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.log.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_dir(path: str | os.PathLike) -> Path:
    """The log directory of `path`: ``path/log`` for a journal, `path` itself for a bare log.

    CliError when `path` is neither (missing, a file, a directory without data.mdb); for a
    multi-rank journal directory it names a rank's directory to use instead.
    """
    return locate_journal(path)[0]


def locate_journal(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(log directory, snapshot store directory) of the journal at `path`; the store is None
    for a bare event log (replay.audit.locate). CliError as for `log_dir`."""
    try:
        return locate(path)
    except FileNotFoundError as exc:
        if layout.is_multirank(path):
            # `log`, `stats` and `verify` read the group; every other command reads one rank.
            ranks = layout.ranks_on_disk(path)
            raise CliError(f"{path} is a multi-rank journal (ranks {', '.join(map(str, ranks))}): this command works "
                           f"on one rank's journal, e.g. {layout.rank_dir(path, ranks[0])}") from None
        raise CliError(str(exc)) from None


def open_source(path: str | os.PathLike) -> Source:
    """Open the journal or bare log at `path` readonly; CliError if it is neither.

    A journal gets its SnapshotStore (a journal without snapshots/ simply has none); a
    bare log gets store None. Once `path` holds a data.mdb, whatever keeps it from opening
    (FormatError, DamagedLogError, LMDB's own errors) propagates as damage (cli.errors).
    """
    root = Path(path)
    directory = log_dir(root)
    log = EventLog.open(directory, readonly=True)
    try:
        store = snapshots.SnapshotStore(paths.snapshots_dir(root), workers=4) if directory != root else None
    except BaseException:
        log.close()
        raise
    return Source(root, log, store)
