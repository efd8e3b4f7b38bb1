"""A restore holds a bounded amount of memory, whatever the replica's size (FORMAT.md, "Restore").

Segment objects are streamed to disk in 1 MiB pieces and checked streaming (about one
piece plus one entry at a time), so what a restore allocates does not grow with the
segments it reads. Measured with tracemalloc (every Python allocation, deterministic),
not with time: the replica here holds about 32 MiB of segments, two of ~16 MiB each, and
the restore must never hold more than 8 MiB at once (a whole segment's body would be 16).
"""

from __future__ import annotations

import tracemalloc

import pytest
import torch

import replay
from replay.replica.objects import open_store
from replay.replica.restore import restore
from replay.replica.shipper import Shipper

pytestmark = pytest.mark.timeout(300)

WIDTH = 4096  # float32 values per entry: 16 KiB payloads that zstd cannot shrink much
ENTRIES = 2000  # ~32 MiB of log: two segments of the 16 MiB target
PEAK_LIMIT = 8 << 20


def _ops() -> replay.Ops:
    ops = replay.Ops()

    @ops.op
    def record(state, *, values):
        state["acc"].add_(values)

    return ops


def _open(path, **kw) -> replay.Journal:
    return replay.Journal.open(path, state={"acc": torch.zeros(WIDTH)}, ops=_ops(), durability="group",
                               snapshot=replay.Every(entries=10**9), snapshot_on_close=False,
                               environment="ignore", **kw)


def test_restore_of_a_replica_larger_than_the_bound_stays_within_it(tmp_path):
    url = (tmp_path / "replica").as_uri()
    g = torch.Generator().manual_seed(3)
    expected = torch.zeros(WIDTH)
    with _open(tmp_path / "a") as journal:
        for _ in range(ENTRIES):
            values = torch.randn(WIDTH, generator=g)
            expected.add_(values)
            journal.apply("record", values=values)
        journal.flush()
        shipper = Shipper(open_store(url), journal.path, journal.log, journal.snapshots,
                          lambda: min(journal.log.durable_index, journal.index), interval=0.05,
                          term=journal.log.term)
        shipper.start()
        try:
            assert shipper.wait(journal.index, timeout=240) == journal.index
        finally:
            shipper.close(30)
        index = journal.index
    with open_store(url) as store:
        sizes = [len(store.get(k, 1 << 30)[0]) for k in store.list("segments/")]
    assert sum(sizes) > 3 * PEAK_LIMIT and max(sizes) > 1.5 * PEAK_LIMIT, sizes

    tracemalloc.start()
    try:
        report = restore(url, tmp_path / "b")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.head_index == index and report.snapshot_index == 0 and report.segments == len(sizes)
    assert peak < PEAK_LIMIT, f"restore held {peak} bytes at its peak, for {sum(sizes)} bytes of segments"
    with _open(tmp_path / "b") as restored:
        assert restored.index == index
        assert torch.equal(restored.state["acc"], expected)
