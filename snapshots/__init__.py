"""snapshots: content-addressed, verified snapshots of nested PyTorch state.

A snapshot captures a state (mappings, lists and tuples whose leaves are tensors of any
dtype and device, or msgpack scalars) at a log index and term. Tensors are cut into
chunks named by the xxh3-128 of their bytes (stored raw by default, or byte-grouped and
zstd-compressed with compression="zstd"), and stored once, so a snapshot writes only the chunks that changed since any snapshot
still in the store. A manifest, committed last by atomic rename, names them all.
Loading checks every chunk's hash; `load_latest()` and `latest_verified()` skip damaged
snapshots and report them.

The on-disk format is described in FORMAT.md, next to this file (read it first).

    store = snapshots.SnapshotStore("runs/exp1/snapshots", keep_last=3)
    info = store.save(state, index=1200, term=3)            # durable on return
    pending = store.save_async(state, index=2400, term=3)   # returns once staged
    pending.result()                                         # -> SnapshotInfo
    info, skipped = store.latest_verified()                  # newest that verifies
    info, state, skipped = store.load_latest()               # newest that loads
    state = store.load(info, map_location="cpu")             # fresh tensors
    model = store.load(info, only=("model",))["model"]       # one component: only its chunks read
    store.load_into(info, live_state)                        # in place
    store.load_into(info, {"model": m.state_dict()}, strict=False)  # the components both have
    store.manifests()                  # every manifest name, with why one does not read
    store.verify(info); store.prune(); store.close()

No pickle is used anywhere: manifests are msgpack, tensors raw bytes.

Copying a store's files elsewhere and back (a replica, a fork), checked both ways, without
its format (snapshots.transfer; the counterpart of eventlog's segment API):

    files = snapshots.StoreFiles("runs/exp1/snapshots")     # lock-free, read-only
    for name in files.manifest_names():                      # oldest first
        mf = files.read_manifest(name)                       # ManifestFile: index, term, meta, chunks, data
        blobs = [files.read_chunk(c.id, c.raw_len, c.stored_len) for c in mf.chunks]
    mf = snapshots.decode_manifest(name, data)               # bytes from elsewhere, checked
    into = snapshots.StoreImport("elsewhere/snapshots")     # put back: chunks staged and checked,
    into.add_chunk(cid, blob, raw_len, stored_len)           # ... then the manifest written last
    files.link_into(cid, raw_len, stored_len, into)          # or: hard-link its file (loose, or its pack)
    into.commit(name, data)

A save writes its new chunks into one pack file (one fsync per save); ``packs=False``
writes one loose file per chunk, as stores before packs were written. Every store reads
loose and packed chunks alike (FORMAT.md, "Pack file").
"""

from .errors import (
    ClosedError,
    ComponentNotFoundError,
    CorruptFileError,
    CorruptSnapshotError,
    DamageError,
    LockedError,
    SnapshotError,
    SnapshotNotFoundError,
    StateMismatchError,
    UnsupportedPlatformError,
)
from .reports import Damage, ManifestEntry, PruneReport, SnapshotInfo, VerifyReport
from .store import PendingSnapshot, SnapshotStore
from .transfer import (MAX_MANIFEST_BYTES, ChunkRef, ManifestFile, StoreFiles, StoreImport, check_chunk_file,
                       decode_manifest, parse_manifest_name)

__all__ = [
    "SnapshotStore",
    "SnapshotInfo",
    "PendingSnapshot",
    "ManifestEntry",
    "VerifyReport",
    "Damage",
    "PruneReport",
    "SnapshotError",
    "CorruptSnapshotError",
    "DamageError",
    "ComponentNotFoundError",
    "SnapshotNotFoundError",
    "StateMismatchError",
    "LockedError",
    "ClosedError",
    "UnsupportedPlatformError",
    "CorruptFileError",
    "StoreFiles",
    "StoreImport",
    "ManifestFile",
    "ChunkRef",
    "decode_manifest",
    "check_chunk_file",
    "parse_manifest_name",
    "MAX_MANIFEST_BYTES",
]
