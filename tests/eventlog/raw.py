"""Damage a log behind its back, by raw LMDB, for the tests that read damage."""

from __future__ import annotations

import contextlib
import struct

import lmdb


def delete_entry(path, index: int) -> None:
    """Delete entry `index` from the LMDB environment of the closed log at `path` (it must
    exist), as a damaged or hand-edited file would lose it."""
    with _entries(path) as (txn, key):
        assert txn.delete(key(index)), f"entry {index} was not in {path}"


def flip_byte(path, index: int, at: int = -1) -> None:
    """Flip the low bit of byte `at` of entry `index`'s stored value (default: its payload's
    last byte, so its checksum no longer matches) in the closed log at `path`."""
    with _entries(path) as (txn, key):
        value = bytearray(txn.get(key(index)))
        value[at] ^= 0x01
        txn.put(key(index), bytes(value))


@contextlib.contextmanager
def _entries(path):
    env = lmdb.open(str(path), max_dbs=4, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(b"entries", create=False)) as txn:
            yield txn, struct.Struct(">Q").pack
    finally:
        env.close()
