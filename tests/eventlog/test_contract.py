"""Runs the shared log contract against every durability mode."""

from .conformance import LogContract


class TestSyncLog(LogContract):
    durability = "sync"


class TestGroupLog(LogContract):
    durability = "group"


class TestOsLog(LogContract):
    durability = "os"
