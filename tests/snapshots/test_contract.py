"""Runs the shared SnapshotStore contract against every way of configuring and saving."""

from .conformance import StoreContract


class TestSmallChunks(StoreContract):
    options = {"chunk_size": 1024, "workers": 4}


class TestOneWorker(StoreContract):
    options = {"chunk_size": 1024, "workers": 1}


class TestLargeChunksLevel3(StoreContract):
    options = {"chunk_size": 1 << 20, "workers": 2, "level": 3}


class TestSaveAsync(StoreContract):
    options = {"chunk_size": 1024, "workers": 4}

    def save(self, store, state, **kw):
        return store.save_async(state, **kw).result(timeout=60)


class TestSaveAsyncLargeChunks(StoreContract):
    options = {"chunk_size": 1 << 20, "workers": 2}

    def save(self, store, state, **kw):
        return store.save_async(state, **kw).result(timeout=60)


class TestPacks(StoreContract):
    options = {"chunk_size": 1024, "workers": 4, "packs": True}


class TestPacksLargeChunksAsync(StoreContract):
    options = {"chunk_size": 1 << 20, "workers": 2, "packs": True}

    def save(self, store, state, **kw):
        return store.save_async(state, **kw).result(timeout=60)
