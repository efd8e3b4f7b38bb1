"""eventlog: a durable, checksum-chained, term-fenced write-ahead log on LMDB.

It knows nothing of models: an entry is ``(index, term, op, payload, time)`` where
`op` names a mutation and `payload` is msgpack with tensors as an extension type. The
byte layout is in ``FORMAT.md`` beside this file (format version 2); every entry starts
with a fixed header of ``HEADER_SIZE`` (32) bytes, then its op name and payload.

The log is tiered. `compact_through(i)` (called once a snapshot covers entries <= i)
moves those entries out of LMDB into sealed, zstd-compressed, checksummed archive
segments under ``<log>/archive/``, durably, before LMDB drops them; every read
(`entry`, `entries`, `headers`, `term_at`, `checksum_at`, `verify`) sees archive and
LMDB as one log. ``first_index`` is the oldest readable entry, ``live_first_index`` the
oldest still in LMDB. History is deleted only by an explicit retention choice:
``EventLog.open(path, archive=eventlog.Archive(keep_bytes=..., keep_seconds=...))``
deletes whole oldest segments at compaction time, and ``archive=None`` makes
compaction delete entries outright (format version 1's behaviour); only then do reads
raise CompactedError. ``log.segments()`` lists the sealed segments (for reports).

Shipping history elsewhere: ``log.sealed_range(first, last)`` returns one sealed segment's
bytes (entries as stored, chained from entry first - 1; split long ranges with
``log.segment_ranges``), ``eventlog.segment_bounds(data)`` checks such bytes and says where
they sit in the chain (``eventlog.check_segment_header(head, size, first, last)`` checks the
first ``SEGMENT_HEADER_SIZE`` bytes of one before the rest is fetched, and
``eventlog.max_segment_size(first, last)`` caps that fetch), and
``eventlog.create_from_segments(path, segments, term=t)`` builds a new log from a
consecutive run of them (FORMAT.md, "Shipping and restoring segments").

    log = eventlog.EventLog.open("runs/exp1/log", durability="group")
    i = log.append("sgd_step", {"batch": ids, "lr": 0.1})
    log.wait_durable(i)
    for entry in log.entries(start=1):
        ...

Durability modes, and exactly what a crash can lose:

- ``sync``: `append` returns only after LMDB's commit fdatasynced it. A process crash
  or power loss loses nothing that `append` returned; `durable_index == last_index`.
- ``group``: `append` returns at once. A background flusher commits the waiting
  entries in one transaction with one fdatasync every half `group_window` (default
  100 ms) and makes each entry durable at most `group_window` after its append (plus
  that fdatasync): a commit's data sync also syncs the previous commit's meta page (as
  in ``os``), and a last batch gets its own sync (durability.py). A crash (process or
  power) never loses an entry at or before `durable_index`; it may lose those after
  it: a power loss, at most the last `group_window` of appends; a process crash, only
  those not yet committed (at most the last half window). `wait_durable(i)`/`flush()`
  block until i is safe, without waiting for the window. A failed flush (EIO, ENOSPC) poisons the log: the unflushed entries
  are reported lost and every later call raises LogPoisonedError (no silent retry:
  after a failed fsync the kernel may have dropped the dirty pages).
- ``os``: `append` returns after LMDB's commit fdatasynced the entry's data pages but
  not the meta page that makes them current (LMDB's MDB_NOMETASYNC): one fsync per
  commit instead of sync's two. A process crash (SIGKILL, OOM) loses nothing; a power
  loss or kernel crash can lose the newest commit(s) after `durable_index`, which
  trails `last_index` by one commit (each commit's fdatasync also flushes the previous
  commit's meta page) and which a background sync catches up every `os_sync_interval`
  seconds (default 1 s). Why not MDB_NOSYNC (no fsync at all): LMDB keeps two meta
  pages and a commit overwrites the older one, so two unsynced commits after a sync
  overwrite both; a power loss then leaves metas on disk whose pages never got there,
  and entries that were durable are lost or unreadable. Only writing data pages to disk
  before the meta page that names them (an fdatasync between them) keeps a durable
  tree, and LMDB never reuses the pages of the two newest trees, so the durable one is
  intact whichever of the two metas survives.

Encoding once: ``encode_payload(payload) -> bytes`` is the payload codec the log uses
(TypeError naming the path of the first value it cannot encode) and
``decode_payload(bytes)`` its inverse. ``append(op, encoded=encode_payload(p))`` stores
those exact bytes without encoding again, so a caller can give its consumer
``decode_payload(encoded)`` -- exactly what a later reader of the entry decodes.

Layout: ``log.EventLog`` states the contract and holds the pieces (its read methods
are in its base class ``queries.LogQueries``). ``storage.Storage`` is the committed log
on LMDB (``meta``: its format, term and boundary records; ``record``: entry framing and
the checksum chain; ``codec``: payloads). A writer (``writer.Writer``) owns its
uncommitted ``tail.Tail``, its ``health.WriterHealth``, its ``commits.Commits`` (what the
background workers of ``durability`` drive) and its ``compaction.Compactor``;
``reader.Reader`` reads the tail, then storage; ``verification.verify`` checks committed
storage without any writer.

Operational facts (LMDB):

- Map size: LMDB needs a maximum size up front. The log starts with `map_size`
  (default 256 MiB of address space, not disk) and doubles it whenever a write hits
  MapFullError; readers in other processes adopt the new size automatically.
- Readers: `open()`, `compact_through()` and `truncate_after()` run `reader_check()` to
  free reader slots of killed processes (whose pinned pages would otherwise never be
  reused, so the file would keep growing), and
  every read holds its transaction for one batch of at most 1024 entries, so readers in
  other processes (audit tools) never keep the writer's old pages alive for long.
- fork: never use an open log across fork(). A log used from another pid raises
  LogError, and a child's inherited copy of the writer lock is closed at fork so it
  cannot outlive the parent's. A child that needs the log opens it itself; py-lmdb
  refuses to reopen, in a forked child, an environment its parent holds open, so start
  such children with multiprocessing's "spawn"/"forkserver" method or as subprocesses.
- One process, one environment: several EventLog objects on one directory in one
  process (a writer and readonly readers) share a single LMDB handle, as LMDB requires.
- One writer: a second writer gets LockedError at once. `takeover=True` starts a new
  term without waiting for a hung writer's lock; the old writer is then fenced
  (FencedError, writes nothing, drops its lock), and the takeover writer takes the lock
  as soon as it is free. Until then it holds ``takeover.lock``, so a plain open gets
  LockedError and `writer_pid` names the takeover writer throughout. A fenced writer
  must stop: reopening it for writing would fence the live writer in turn.
- Network filesystems (NFS, SMB, sshfs, ...) are refused: LMDB is unsafe there.
- Readers without write access (a read-only mount, another user's log): a readonly open
  that may not write or create ``lock.mdb`` reads without a lock file and creates
  nothing; since a writer cannot see such a reader, it reads only while no writer is live
  and raises LogError naming the writer's pid otherwise (FORMAT.md, "Readers without
  write access").
- Archived history is checked as one chain: every read that loads a sealed segment
  checks that it continues into the next segment and into LMDB's boundary, so a segment
  of another log (a fork sharing this log's start) is DamagedSegmentError naming it
  before any of its entries is read (FORMAT.md, "Readers").
"""

from .errors import (
    ClosedError,
    CompactedError,
    CorruptEntryError,
    DamageError,
    DamagedLogError,
    DamagedSegmentError,
    SealedError,
    SegmentDamage,
    SegmentRejectedError,
    FencedError,
    FormatError,
    LockedError,
    LogError,
    LogPoisonedError,
    TruncatedError,
)
from .archive import ARCHIVE_DIR, Archive, SegmentInfo
from .codec import decode_payload, encode_payload
from .locking import writer_pid
from .log import EventLog
from .meta import FORMAT_VERSION
from .record import HEADER_SIZE, Entry, EntryHeader
from .segment import TARGET_RAW as SEGMENT_TARGET_BYTES
from .merging import MERGE_FANOUT, newest_to_merge
from .segment_checks import (check_segment_file, check_segment_header, max_segment_size, segment_bounds,
                             segment_identity)
from .transfer import (CreatedLog, create_from_segment_files, create_from_segments, read_segment_file,
                       read_segment_seed)
from .segment import HEADER_SIZE as SEGMENT_HEADER_SIZE
from .verification import Damage, VerifyReport

__all__ = [
    "ARCHIVE_DIR",
    "EventLog", "Archive", "SegmentInfo", "writer_pid", "encode_payload", "decode_payload", "Entry", "EntryHeader", "VerifyReport", "Damage", "FORMAT_VERSION",
    "HEADER_SIZE",
    "LogError", "DamageError", "ClosedError", "CorruptEntryError", "CompactedError", "FencedError", "LockedError",
    "LogPoisonedError", "FormatError", "TruncatedError", "DamagedLogError", "DamagedSegmentError", "SealedError",
    "SegmentDamage", "SegmentRejectedError", "create_from_segments", "segment_bounds", "read_segment_file",
    "create_from_segment_files", "check_segment_file", "CreatedLog", "segment_identity",
    "read_segment_seed",
    "check_segment_header", "max_segment_size", "SEGMENT_HEADER_SIZE", "SEGMENT_TARGET_BYTES", "MERGE_FANOUT", "newest_to_merge",
]
