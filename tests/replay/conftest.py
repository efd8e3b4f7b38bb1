import snapshots

if not hasattr(snapshots, "SnapshotStore"):  # until snapshots/__init__.py exports its store
    from snapshots.store import SnapshotStore

    snapshots.SnapshotStore = SnapshotStore
