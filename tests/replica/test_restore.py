"""Restore against hostile replica objects, and shipping across a local truncation."""

from __future__ import annotations

import pytest

import replay
from replay.replica.chain import parse_segment_key
from replay.replica.errors import ReplicaDamageError
from replay.replica.head import HEAD_KEY
from replay.replica.objects import open_store
from replay.replica.restore import restore
from replay.replica.snapfiles import decode_manifest
from tests.chunkcopies import chunk_ids

from .test_shipping import apply_n, assert_state, open_journal, ship

pytestmark = pytest.mark.timeout(120)


def _shipped_run(tmp_path, url, options, n=30):
    with open_journal(tmp_path / "a") as journal:
        shipper = ship(journal, url, options)
        apply_n(journal, n)
        journal.flush()
        shipper.wait(n, timeout=60)
        journal.snapshot(wait=True)  # a snapshot at n, committed after the entries were shipped
        shipper.wait(n, timeout=60)
        shipper.close(timeout=30)


def _replace(store, key: str, data: bytes) -> None:
    store.delete(key)
    assert store.put_if_absent(key, data)


def _manifests(store):
    out = []
    for key in store.list("manifests/"):
        data, _ = store.get(key, 1 << 26)
        out.append((key, decode_manifest(key.split("/")[1], data)))
    return sorted(out, key=lambda kv: kv[1].index)


def _unique_chunk(store) -> str:
    """A chunk of the newest manifest that no older one names."""
    manifests = _manifests(store)
    older = {c.id for _, mf in manifests[:-1] for c in mf.manifest.chunks}
    return next(c.id for c in manifests[-1][1].manifest.chunks if c.id not in older)


def test_a_missing_chunk_falls_back_to_an_older_snapshot(tmp_path, replica_url):
    url, options = replica_url
    _shipped_run(tmp_path, url, options)
    with open_store(url, options) as store:
        newest = _manifests(store)[-1][0]
        cid = _unique_chunk(store)
        store.delete(f"chunks/{cid}")
    report = restore(url, tmp_path / "b", options)
    assert report.head_index == 30 and report.snapshot != newest.split("/")[1]
    assert any(f"chunks/{cid}" in line and "missing" in line for line in report.skipped)
    with open_journal(tmp_path / "b") as copy:
        assert copy.index == 30
        assert_state(copy.state, 30)


def test_a_chunk_whose_bytes_do_not_match_its_name_is_refused(tmp_path, replica_url):
    url, options = replica_url
    _shipped_run(tmp_path, url, options)
    with open_store(url, options) as store:
        cid = _unique_chunk(store)
        other = next(k for k in store.list("chunks/") if k != f"chunks/{cid}")
        data, _ = store.get(f"chunks/{cid}", 1 << 20)
        forged = bytearray(data)
        forged[-1] ^= 0x01  # same size, one bit off
        _replace(store, f"chunks/{cid}", bytes(forged))
        assert other
    report = restore(url, tmp_path / "b", options)
    assert any(f"chunks/{cid}" in line for line in report.skipped)
    assert cid not in chunk_ids(tmp_path / "b" / "snapshots")  # in no file, loose or packed
    with open_journal(tmp_path / "b") as copy:
        assert_state(copy.state, 30)


def test_a_garbage_manifest_is_skipped(tmp_path, replica_url):
    url, options = replica_url
    _shipped_run(tmp_path, url, options)
    with open_store(url, options) as store:
        newest = _manifests(store)[-1][0]
        _replace(store, newest, b"SNPMANIF" + b"\0" * 100)
    report = restore(url, tmp_path / "b", options)
    assert any(newest in line and "not a manifest" in line for line in report.skipped)
    with open_journal(tmp_path / "b") as copy:
        assert_state(copy.state, 30)


def test_a_truncated_segment_on_the_path_refuses_the_restore(tmp_path, replica_url):
    url, options = replica_url
    _shipped_run(tmp_path, url, options)
    with open_store(url, options) as store:
        key = store.list("segments/")[-1]
        data, _ = store.get(key, 1 << 26)
        _replace(store, key, data[: len(data) // 2])
    with pytest.raises(ReplicaDamageError) as caught:
        restore(url, tmp_path / "b", options)
    assert caught.value.key == key
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


@pytest.mark.parametrize("head", [b"{not json", b'{"format": 1}', b" " * (70 << 10),
                                  b'{"format":1,"term":1,"owner":"a","index":NaN,"checksum":0,"time":0}'])
def test_a_hostile_head_is_damage_naming_it(tmp_path, replica_url, head):
    url, options = replica_url
    with open_store(url, options) as store:
        store.put_if_absent(HEAD_KEY, head)
    with pytest.raises(ReplicaDamageError, match="head.json") as caught:
        restore(url, tmp_path / "b", options)
    assert caught.value.key == HEAD_KEY


def test_truncation_reships_from_the_last_agreeing_boundary(tmp_path, replica_url):
    """An operator truncate of shipped entries: head moves to the new chain, the old is never restored."""
    url, options = replica_url
    path = tmp_path / "a"
    with open_journal(path, every=1000, snapshot_on_close=False) as journal:
        shipper = ship(journal, url, options)
        apply_n(journal, 20)
        journal.flush()
        shipper.wait(20, timeout=60)
        shipper.close(timeout=30)
    replay.truncate(path, after=12, reason="test")  # drops 13..20, appends the audit entry at 13
    with open_journal(path, every=1000, snapshot_on_close=False) as journal:
        assert journal.index == 13 and journal.count() == 12
        shipper = ship(journal, url, options)
        apply_n(journal, 5)
        journal.flush()
        assert shipper.wait(18, timeout=60) == 18
        shipper.close(timeout=30)
    with open_store(url, options) as store:
        keys = [parse_segment_key(k) for k in store.list("segments/")]
    assert any(k.first <= 13 <= k.last for k in keys)  # the new chain covers the rewritten entries
    restore(url, tmp_path / "b", options)
    with open_journal(tmp_path / "b") as copy:
        assert copy.index == 18 and copy.count() == 17
        assert_state(copy.state, 17)
