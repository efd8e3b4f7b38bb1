"""Runs the shared log contract against every durability mode, with the default archive
(compaction seals history) and with archive=None (compaction deletes it)."""

from .conformance import LogContract


class TestSyncLog(LogContract):
    durability = "sync"


class TestGroupLog(LogContract):
    durability = "group"


class TestOsLog(LogContract):
    durability = "os"


class TestSyncLogNoArchive(LogContract):
    durability = "sync"
    archive = None


class TestGroupLogNoArchive(LogContract):
    durability = "group"
    archive = None


class TestOsLogNoArchive(LogContract):
    durability = "os"
    archive = None
