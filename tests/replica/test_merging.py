"""Merging a replica's segment objects (replay/replica/FORMAT.md, "Merging segments"): a
journal that ships after every entry keeps a bounded number of segment objects, and the
replica restores bit for bit; locally its archive stays bounded too (issue: 6,394 entries
left 441 objects and 405 files). Against file:// and a real S3 endpoint (moto)."""

from __future__ import annotations

import pytest

from eventlog import MERGE_FANOUT
from eventlog.archive import list_segments
from replay.replica.chain import parse_segment_key, walk_back
from replay.replica.head import read_head
from replay.replica.objects import open_store

from .test_retention import Spy, assert_consistent, assert_restores, keys, start
from .test_shipping import apply_n, open_journal

pytestmark = pytest.mark.timeout(240)


def _bound(rounds: int) -> int:
    """Alike segments merge as a base-8 counter carries: at most MERGE_FANOUT - 1 per digit."""
    digits = 1
    while MERGE_FANOUT ** digits <= rounds:
        digits += 1
    return (MERGE_FANOUT - 1) * digits


def test_shipping_every_entry_keeps_a_bounded_number_of_objects(tmp_path, replica_url):
    url, options = replica_url
    store = Spy(open_store(url, options))
    journal = open_journal(tmp_path / "a", every=10, async_snapshots=False)  # the default archive: GC floor 0
    shipper = start(journal, store)
    rounds = 150
    try:
        for _ in range(rounds):  # one entry per round: one segment object per round before merging
            apply_n(journal, 1)
            journal.flush()
            shipper.wait(journal.index, timeout=60)
        shipper.collect(timeout=60)
        index = journal.index
        archived = list_segments(journal.path / "log" / "archive")
        shipped = [k for k in store.created if k.startswith("segments/")]
        left = sorted(keys(store, "segments/"))
        assert len(shipped) > rounds, "fewer uploads than rounds: the test did not ship one segment per round"
        assert len(left) <= _bound(rounds), left
        head, _ = read_head(store)
        path = walk_back([parse_segment_key(k) for k in left], head.index, head.checksum)
        assert [s.key for s in path] == left, "an object off the head's path survived collection"
        assert path[0].first == 1 and path[-1].last == head.index == index
        assert len(archived) <= _bound(index // 10), archived  # the local archive: one compaction per snapshot
        assert_consistent(store)
    finally:
        shipper.close(timeout=30)
        journal.close()
    assert_restores(url, options, tmp_path / "b", rounds)
