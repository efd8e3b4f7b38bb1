"""Review of the pack index cache (snapshots/locating.py) that the remembered copies sit
on: a pack name can hold a torn pack and later a good one (a save's pack is named before
its fsync; after a crash tears it, recovery saves the same chunks again, at the same
offsets, under the same name: FORMAT.md, "Commit protocol"). A reader that listed the
torn pack must not go on calling the good one damaged."""

from __future__ import annotations

import os

import pytest

import snapshots

from .conftest import assert_same
from .test_packs import _packs, _state, _tear


@pytest.mark.parametrize("kind", ["empty", "no_trailer"])
def test_a_reader_that_saw_a_torn_pack_reads_the_good_pack_saved_again_under_its_name(open_store, tmp_path, kind):
    root = tmp_path / "s"
    writer = open_store(root, packs=True, chunk_size=4096)
    writer.save(_state(1), index=1, term=1)
    first = set(_packs(root))
    writer.save(_state(2), index=2, term=1)
    [pack] = set(_packs(root)) - first
    writer.close()
    os.unlink(os.path.join(root, "manifests", "2-1"))  # the crash image: the pack named, not the manifest
    _tear(kind, os.path.join(root, "packs", pack))

    reader = open_store(root)  # a long-lived reader in another process (an evaluator polling the store)
    info, state, _ = reader.load_latest()
    assert info.manifest_id == "1-1"
    # Loading lists packs/: the torn pack's index did not read, and the reader knows it as damaged.
    files = snapshots.StoreFiles(root)  # a replica's reader, long-lived too
    for ref in files.read_manifest("1-1").chunks:
        files.check_chunk(ref.id, ref.raw_len, ref.stored_len)  # lists the packs, the torn one with them

    recovered = open_store(root, packs=True, chunk_size=4096)  # the writer's restart saves state 2 again
    recovered.save(_state(2), index=2, term=1)
    assert pack in _packs(root), "the test needs the re-save to take the torn pack's name"
    assert open_store(root).verify("2-1").ok  # a fresh reader: fine

    report = reader.verify("2-1")
    assert report.ok, [d.reason for d in report.damage]
    info, state, skipped = reader.load_latest()
    assert info.manifest_id == "2-1" and not skipped
    assert_same(state, _state(2))
    for ref in files.read_manifest("2-1").chunks:
        files.check_chunk(ref.id, ref.raw_len, ref.stored_len)
        files.read_chunk(ref.id, ref.raw_len, ref.stored_len)


def test_a_damaged_pack_that_does_not_change_is_not_read_again_for_every_missing_chunk(open_store, tmp_path,
                                                                                       monkeypatch):
    from snapshots import locating

    root = tmp_path / "s"
    writer = open_store(root, packs=True, chunk_size=4096)
    writer.save(_state(1), index=1, term=1)
    [first] = _packs(root)
    writer.save(_state(2), index=2, term=1)
    [torn] = set(_packs(root)) - {first}
    writer.close()
    _tear("empty", os.path.join(root, "packs", torn))
    os.unlink(os.path.join(root, "packs", first))  # every chunk of 1-1 missing: a relist each
    reads = []
    real = locating.read_index

    def read_index(path):
        reads.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(locating, "read_index", read_index)
    report = open_store(root).verify("1-1")
    assert len(report.damage) > 3 and all("missing" in d.reason for d in report.damage)
    assert reads.count(torn) <= 2, reads  # listed, then read once more: not once per missing chunk
