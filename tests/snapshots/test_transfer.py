"""The transfer contract (snapshots.transfer), written once: reading a store's files out
(`StoreFiles`), checking bytes from elsewhere (`decode_manifest`, `check_chunk_file`) and
putting them back (`StoreImport`). Every store configuration subclasses TransferContract.
Edge cases first: the missing store, names that are not snapshots, damage of every kind,
then the round trip (a copy loads bit for bit) and the commit protocol.
"""

from __future__ import annotations

import os

import pytest
import torch

import snapshots

from tests.chunkcopies import region

from .conftest import assert_same


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3000, generator=g), "b": torch.arange(40, dtype=torch.int32),
            "h": torch.randn(500, generator=g).to(torch.bfloat16), "step": seed}


def _copy(files: snapshots.StoreFiles, into: snapshots.StoreImport, name: str) -> snapshots.ManifestFile:
    mf = files.read_manifest(name)
    for ref in mf.chunks:
        into.add_chunk(ref.id, files.read_chunk(ref.id, ref.raw_len, ref.stored_len), ref.raw_len, ref.stored_len)
    return into.commit(name, mf.data)


class TransferContract:
    options: dict = {}

    @pytest.fixture
    def saved(self, open_store):
        """A store holding two snapshots (1-1, 2-1); (store, files)."""
        store = open_store(**self.options)
        store.save(_state(1), index=1, term=1, meta={"k": 1})
        store.save(_state(2), index=2, term=1)
        return store, snapshots.StoreFiles(store.path)

    # --- nothing there -----------------------------------------------------------------

    def test_a_missing_store_lists_nothing_and_creates_nothing(self, tmp_path):
        files = snapshots.StoreFiles(tmp_path / "none")
        assert files.manifest_names() == []
        with pytest.raises(FileNotFoundError):
            files.read_manifest("1-1")
        assert not (tmp_path / "none").exists()

    def test_names_that_are_not_manifests_are_refused_or_skipped(self, saved):
        store, files = saved
        open(os.path.join(store.path, "manifests", ".tmp.3-1.1.ab"), "wb").close()
        assert files.manifest_names() == ["1-1", "2-1"]
        for bad in ("../1-1", "x", ""):
            with pytest.raises(snapshots.CorruptFileError):
                files.read_manifest(bad)
        with pytest.raises(ValueError):
            files.read_chunk("../../x", 1, 1)

    # --- damage --------------------------------------------------------------------------

    @pytest.mark.parametrize("data", [b"", b"SNPMANIF", b"x" * 200])
    def test_bytes_that_are_not_a_manifest(self, data):
        with pytest.raises(snapshots.CorruptFileError) as info:
            snapshots.decode_manifest("1-1", data)
        assert info.value.manifest == "1-1" and info.value.chunk is None
        assert isinstance(info.value, snapshots.CorruptSnapshotError)

    def test_a_bit_flip_in_a_manifest(self, saved):
        store, files = saved
        data = bytearray(files.read_manifest("2-1").data)
        data[-1] ^= 1
        with pytest.raises(snapshots.CorruptFileError, match="checksum"):
            snapshots.decode_manifest("2-1", bytes(data))

    def test_a_manifest_that_is_a_symlink_is_damage(self, saved):
        store, files = saved
        path = os.path.join(store.path, "manifests", "9-1")
        os.symlink(os.path.join(store.path, "manifests", "1-1"), path)
        with pytest.raises(snapshots.CorruptFileError, match="symbolic link"):
            files.read_manifest("9-1")

    def test_a_damaged_chunk_is_never_handed_out(self, saved):
        store, files = saved
        ref = files.read_manifest("1-1").chunks[0]
        where = region(store.path, ref.id)  # its loose file, or its range in a pack
        where.flip(where.size - 1)
        with pytest.raises(snapshots.CorruptFileError) as info:
            files.read_chunk(ref.id, ref.raw_len, ref.stored_len)
        assert info.value.chunk == ref.id
        alone = os.path.join(store.path, "damaged-copy")  # the chunk file by itself, as a replica holds it
        with open(alone, "wb") as f:
            f.write(where.read())
        with pytest.raises(snapshots.CorruptFileError):
            snapshots.check_chunk_file(alone, ref.id, ref.raw_len, ref.stored_len)

    def test_a_chunk_of_other_sizes_than_declared(self, saved):
        store, files = saved
        ref = files.read_manifest("1-1").chunks[0]
        with pytest.raises(snapshots.CorruptFileError):
            files.read_chunk(ref.id, ref.raw_len, ref.stored_len + 1)
        with pytest.raises(snapshots.CorruptFileError):
            files.read_chunk(ref.id, ref.raw_len + 1, ref.stored_len)

    def test_a_missing_chunk_is_file_not_found(self, saved):
        store, files = saved
        ref = files.read_manifest("1-1").chunks[0]
        os.unlink(region(store.path, ref.id).path)  # the loose file, or the whole pack
        with pytest.raises(FileNotFoundError):
            files.read_chunk(ref.id, ref.raw_len, ref.stored_len)

    # --- putting back ----------------------------------------------------------------------

    def test_import_refuses_bytes_that_are_not_the_chunk_and_leaves_nothing(self, saved, tmp_path):
        store, files = saved
        refs = files.read_manifest("1-1").chunks
        into = snapshots.StoreImport(tmp_path / "copy")
        other = files.read_chunk(refs[1].id, refs[1].raw_len, refs[1].stored_len)
        with pytest.raises(snapshots.CorruptFileError):
            into.add_chunk(refs[0].id, other, refs[0].raw_len, len(other))
        with pytest.raises(snapshots.CorruptFileError):
            into.add_chunk(refs[0].id, other, refs[0].raw_len, refs[0].stored_len + 7)
        left = [n for _, _, names in os.walk(tmp_path / "copy") for n in names]
        assert left == []

    def test_commit_refuses_a_manifest_whose_chunks_are_not_there(self, saved, tmp_path):
        store, files = saved
        into = snapshots.StoreImport(tmp_path / "copy")
        with pytest.raises(snapshots.CorruptFileError, match="neither staged"):
            into.commit("1-1", files.read_manifest("1-1").data)
        assert snapshots.StoreFiles(tmp_path / "copy").manifest_names() == []
        with pytest.raises(snapshots.CorruptFileError):
            into.commit("1-1", b"not a manifest")

    def test_discard_drops_what_was_staged(self, saved, tmp_path):
        store, files = saved
        ref = files.read_manifest("1-1").chunks[0]
        into = snapshots.StoreImport(tmp_path / "copy")
        into.add_chunk(ref.id, files.read_chunk(ref.id, ref.raw_len, ref.stored_len), ref.raw_len, ref.stored_len)
        into.discard()
        into.discard()
        assert [n for _, _, names in os.walk(tmp_path / "copy") for n in names] == []

    def test_a_copy_loads_bit_for_bit(self, saved, tmp_path, open_store):
        store, files = saved
        into = snapshots.StoreImport(tmp_path / "copy")
        first = _copy(files, into, "1-1")
        assert (first.index, first.term, first.meta) == (1, 1, {"k": 1})
        _copy(snapshots.StoreFiles(store.path), into, "2-1")  # shared chunks: already there
        copied = snapshots.StoreFiles(tmp_path / "copy")
        assert copied.manifest_names() == ["1-1", "2-1"]
        assert copied.read_manifest("2-1").data == files.read_manifest("2-1").data
        other = open_store(path=tmp_path / "copy", **self.options)
        for name, seed in (("1-1", 1), ("2-1", 2)):
            assert other.verify(name).ok
            assert_same(other.load(name), _state(seed))

    def test_reading_beside_a_live_writer_needs_no_lock(self, saved):
        store, files = saved
        store.save(_state(3), index=3, term=1)  # the writer still holds its lock
        mf = files.read_manifest("3-1")
        for ref in mf.chunks:
            files.check_chunk(ref.id, ref.raw_len, ref.stored_len)
        assert files.manifest_names()[-1] == "3-1"


class TestSmallChunks(TransferContract):
    options = {"chunk_size": 1024, "workers": 2}


class TestLargeChunksLevel3(TransferContract):
    options = {"chunk_size": 1 << 20, "workers": 1, "level": 3}


class TestLooseChunks(TransferContract):
    """A store written before packs (or with packs=False): one file per chunk."""

    options = {"chunk_size": 1024, "workers": 2, "packs": False}
