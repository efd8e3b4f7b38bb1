import pytest

import snapshots

if not hasattr(snapshots, "SnapshotStore"):  # the real store has not landed yet
    from .fakestore import FakeSnapshotStore

    snapshots.SnapshotStore = FakeSnapshotStore
