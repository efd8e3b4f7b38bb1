"""snapshots: content-addressed, compressed, verified snapshots of nested PyTorch state.

A snapshot captures a state (mappings, lists and tuples whose leaves are tensors of any
dtype and device, or msgpack scalars) at a log index and term. Tensors are cut into
chunks named by the xxh3-128 of their bytes, byte-grouped and zstd-compressed, and
stored once, so a snapshot writes only the chunks that changed since any snapshot
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
"""

from .errors import (
    ClosedError,
    ComponentNotFoundError,
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
]
