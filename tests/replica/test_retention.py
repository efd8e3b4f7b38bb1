"""Retention and garbage collection of a replica (replay/replica/FORMAT.md, "Retention and garbage
collection"): the replica keeps what the local store keeps (and `keep_extra` more), the newest
restorable snapshot, their chunks and the head's path from the oldest kept snapshot; a sweep
cut short leaves a restorable replica; a fenced writer deletes nothing and its late uploads
are swept by the new owner. Against file:// and a real S3 endpoint (moto)."""

from __future__ import annotations

import pytest

from replay.replica.chain import parse_manifest_key, parse_segment_key, walk_back
from replay.replica.errors import ReplicaFencedError, ReplicaUnavailableError
from replay.replica.head import read_head
from replay.replica.objects import open_store
from replay.replica.restore import restore
from replay.replica.retention import Collector, ManifestInfo, plan
from replay.replica.shipper import Shipper
from replay.replica.snapfiles import LocalStore, decode_manifest

from .test_shipping import apply_n, assert_state, open_journal

pytestmark = pytest.mark.timeout(180)


class Spy:
    """An ObjectStore that records what was created and deleted through it, and can fail every
    `fail_every`-th delete (an injected error: the sweep is cut short right there)."""

    def __init__(self, inner, fail_every: int | None = None):
        self.inner = inner
        self.fail_every = fail_every
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.failed: list[str] = []
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_if_absent(self, key, data):
        created = self.inner.put_if_absent(key, data)
        if created:
            self.created.append(key)
        return created

    def delete(self, key):
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            self.failed.append(key)
            raise ReplicaUnavailableError(self.inner.url, f"injected: delete {key} cut short")
        self.inner.delete(key)
        self.deleted.append(key)


def start(journal, store, interval: float = 0.05, **kw) -> Shipper:
    shipper = Shipper(store, journal.path, journal.log, journal.snapshots,
                      lambda: min(journal.log.durable_index, journal.index), interval=interval,
                      term=journal.log.term, collect_every=None, **kw)
    shipper.start()
    return shipper


def grow(journal, shipper, batches: int, per: int = 5) -> None:
    """`batches` batches of entries, each shipped before the next (so every snapshot ships)."""
    for _ in range(batches):
        apply_n(journal, per)
        journal.flush()
        shipper.wait(journal.index, timeout=60)


def keys(store, prefix: str) -> set[str]:
    return set(store.list(prefix))


def replica_chunks(store, names) -> set[str]:
    """The chunk keys the replica's manifests `names` name (read back from the replica)."""
    out = set()
    for n in names:
        data, _ = store.get("manifests/" + n, 1 << 26)
        out |= {"chunks/" + ref.id for ref in decode_manifest(n, data).manifest.chunks}
    return out


def assert_restores(url, options, target, index: int) -> None:
    restore(url, target, options)
    with open_journal(target) as copy:
        assert copy.index == index
        assert_state(copy.state, index)


def assert_consistent(store) -> None:
    """No manifest on the replica points at a missing object: every chunk it names is there, and
    the head's path reaches down to its index (a restore from it has every segment it needs)."""
    head, _ = read_head(store)
    path = walk_back([parse_segment_key(k) for k in keys(store, "segments/")], head.index, head.checksum)
    chunks = keys(store, "chunks/")
    for key in keys(store, "manifests/"):
        name = key.split("/", 1)[1]
        assert replica_chunks(store, [name]) <= chunks, f"{key} names a chunk no longer on the replica"
        assert path[0].first - 1 <= parse_manifest_key(key)[0], f"{key} is below the head's path"


def assert_retained(store, journal, extra: int = 0) -> None:
    """The replica holds exactly the local store's manifests (+ `extra` older ones on the head's
    history), their chunks, and the head's path from the oldest of them."""
    head, _ = read_head(store)
    local = set(LocalStore(journal.path / "snapshots").manifest_names())
    manifests = {k.split("/", 1)[1] for k in keys(store, "manifests/")}
    assert local <= manifests and len(manifests) == len(local) + extra
    floor = min(parse_manifest_key("manifests/" + n)[0] for n in manifests)
    segments = [parse_segment_key(k) for k in sorted(keys(store, "segments/"))]
    path = walk_back(segments, head.index, head.checksum)
    assert path == segments, "a segment off the head's path survived"
    assert path[0].first - 1 <= floor and all(s.last >= floor for s in path)
    assert keys(store, "chunks/") == replica_chunks(store, manifests)


@pytest.mark.parametrize("extra", [0, 2])
def test_the_replica_keeps_what_the_local_store_keeps(tmp_path, replica_url, extra):
    url, options = replica_url
    store = Spy(open_store(url, options))
    journal = open_journal(tmp_path / "a", every=5, archive=None, async_snapshots=False)  # keep_last=2, no archive: the oldest goes too
    shipper = start(journal, store, keep_extra=extra)
    try:
        grow(journal, shipper, 9)  # 45 entries: snapshots at 5, 10, ..., 45, each shipped
        counts = shipper.collect(timeout=60)
        assert_retained(store, journal, extra)
        assert (counts.sweeps, counts.attempts, counts.skipped) == (1, 1, 0)
        # Every deletion counted, by prefix; what was created and not deleted is what is left.
        for prefix, counted in (("manifests/", counts.manifests), ("segments/", counts.segments),
                                ("chunks/", counts.chunks)):
            deleted = [k for k in store.deleted if k.startswith(prefix)]
            created = {k for k in store.created if k.startswith(prefix)}
            assert len(deleted) == counted and set(deleted) <= created
            assert created - set(deleted) == keys(store, prefix)
        assert counts.manifests == 10 - 2 - extra  # indexes 0, 5, ..., 45 shipped; the rest swept
        assert counts.segments > 0 and counts.chunks > 0
        # The shipper goes on: chunks it had shipped and the sweep removed are shipped again
        # when a new snapshot names them, and the next sweep keeps the invariant.
        grow(journal, shipper, 3)
        shipper.collect(timeout=60)
        assert_retained(store, journal, extra)
        assert shipper.status().last_error is None
    finally:
        shipper.close(timeout=30)
        journal.close()
    assert_restores(url, options, tmp_path / "b", 60)


def test_a_sweep_cut_short_anywhere_leaves_a_restorable_replica(tmp_path, replica_url):
    """Every 3rd delete fails: each sweep is cut short after two deletions, in every phase
    (manifests, segments, chunks); after each, the replica restores to its head bit for bit.
    Halfway, the journal and shipper are closed and reopened (a process killed mid-sweep
    restarts with nothing in memory); the sweeps then finish the job."""
    url, options = replica_url
    journal = open_journal(tmp_path / "a", every=5, archive=None, async_snapshots=False)
    store = Spy(open_store(url, options), fail_every=3)
    shipper = start(journal, store)
    restores, phases = 0, set()
    try:
        grow(journal, shipper, 8)
        for attempt in range(40):
            if attempt == 2:
                shipper.close(timeout=30)
                journal.close()
                journal = open_journal(tmp_path / "a", every=5, archive=None, async_snapshots=False)
                store = Spy(open_store(url, options), fail_every=3)
                shipper = start(journal, store)
                shipper.wait(journal.index, timeout=60)
            try:
                shipper.collect(timeout=60)
                break
            except ReplicaUnavailableError as exc:
                assert "injected" in str(exc) and "injected" in shipper.collect_error
                assert shipper.status().last_error is None  # the round shipped; only the sweep failed
            phase = store.failed[-1].split("/", 1)[0]
            assert_consistent(store)
            if phase not in phases or attempt == 2:  # a restore per phase cut short, and after the restart
                phases.add(phase)
                restores += 1
                assert_restores(url, options, tmp_path / f"r{attempt}", journal.index)
        else:
            pytest.fail("the sweeps never finished")
        assert_retained(store, journal)
        assert phases == {"manifests", "segments", "chunks"} and restores >= 3
    finally:
        shipper.close(timeout=30)
        journal.close()
    assert_restores(url, options, tmp_path / "end", 40)


def test_a_fenced_writer_deletes_nothing_and_its_late_uploads_are_swept(tmp_path, replica_url):
    url, options = replica_url
    original = open_journal(tmp_path / "a", async_snapshots=False)
    old_store = Spy(open_store(url, options))
    old = start(original, old_store, interval=3600)  # a round only when asked: all 12 entries ship in one
    try:
        apply_n(original, 10)
        original.flush()
        old.wait(10, timeout=60)
        restore(url, tmp_path / "b", options)
        with open_journal(tmp_path / "b") as moved:
            new_store = Spy(open_store(url, options))
            new = start(moved, new_store)
            try:
                moved.flush()
                new.wait(10, timeout=60)
                with open_store(url, options) as plain:
                    before = keys(plain, "")
                # The original goes on (a partition) with its own history, snapshots at 14 and 21
                # included: it uploads chunks, manifests and segments, then its head write is refused.
                for i in range(12):
                    original.apply("add", value=1000.0 + i)
                original.flush()
                with pytest.raises(ReplicaFencedError):
                    old.wait(22, timeout=60)
                with pytest.raises(ReplicaFencedError):
                    old.collect(timeout=30)
                assert old_store.deleted == []  # nothing deleted while fenced
                with open_store(url, options) as plain:
                    late = keys(plain, "") - before
                assert any(k.startswith("segments/") for k in late)
                assert any(k.startswith("manifests/") for k in late)
                assert any(k.startswith("chunks/") for k in late)
                # The new owner's next sweep removes all of it (none of it is on its history).
                apply_n(moved, 4)
                moved.flush()
                new.wait(14, timeout=60)
                counts = new.collect(timeout=60)
                with open_store(url, options) as plain:
                    left = keys(plain, "") & late
                    # Only content-named chunks the new owner's own snapshots name too survive
                    # (the step counter at 14 is the same tensor on both histories).
                    kept = replica_chunks(plain, {k.split("/", 1)[1] for k in keys(plain, "manifests/")})
                    assert left <= kept and all(k.startswith("chunks/") for k in left)
                assert counts.manifests >= 1 and counts.segments >= 1 and counts.chunks >= 1
                assert set(new_store.deleted) >= late - left
            finally:
                new.close(timeout=30)
    finally:
        old.close(timeout=30)
        original.close()
    assert_restores(url, options, tmp_path / "c", 14)


def test_a_sweep_after_someone_else_wrote_the_head_deletes_nothing(tmp_path, replica_url):
    """The ownership check between listing and deleting: head.json's etag is not the one this
    writer last wrote (a takeover in between): ReplicaFencedError, no delete."""
    url, options = replica_url
    with open_journal(tmp_path / "a", every=5, archive=None, async_snapshots=False) as journal:
        store = Spy(open_store(url, options))
        shipper = start(journal, store)
        try:
            grow(journal, shipper, 4)
        finally:
            shipper.close(timeout=30)
        with open_store(url, options) as plain:
            head, etag = read_head(plain)
            spy = Spy(plain)
            before = keys(plain, "")
            collector = Collector(spy)
            with pytest.raises(ReplicaFencedError, match="changed"):
                collector.sweep((head.index, head.checksum), "not-" + etag, set(), lambda i: None,
                                lambda plan, chunks: None)
            assert spy.deleted == [] and keys(plain, "") == before
            assert collector.collected.attempts == 1 and collector.collected.sweeps == 0
            # With the right etag the same sweep deletes (the local store keeps nothing: the
            # anchor, the newest snapshot on the head's path, stays with its chunks and path).
            counts_before = len(before)
            collector.sweep((head.index, head.checksum), etag, set(), lambda i: None, lambda plan, chunks: None)
            assert spy.deleted and len(keys(plain, "")) == counts_before - len(spy.deleted)
            assert len(keys(plain, "manifests/")) == 1
    assert_restores(url, options, tmp_path / "b", 20)


# ---------------------------------------------------------------------- the plan alone


def seg(first, last, prev, ck):
    from replay.replica.chain import SegmentKey
    return SegmentKey(first, last, prev, ck)


def test_plan_marks_the_path_from_the_oldest_kept_manifest():
    path = [seg(1, 5, 0, 5), seg(6, 10, 5, 10), seg(11, 15, 10, 15), seg(16, 20, 15, 20)]
    stray = seg(11, 12, 10, 0xbad)  # an abandoned chain (a truncation, a fenced writer)
    infos = {"5-1": ManifestInfo(5, 5, frozenset({"a" * 32})),
             "10-1": ManifestInfo(10, 10, frozenset({"b" * 32})),
             "15-1": ManifestInfo(15, 15, frozenset({"b" * 32, "c" * 32})),
             "12-1": ManifestInfo(12, 0xbad, frozenset({"d" * 32})),  # not on the head's history
             "20-1": ManifestInfo(20, 20, frozenset({"e" * 32}))}  # its chunk is missing: incomplete
    chunks = [f"chunks/{c * 32}" for c in "abcd"]
    manifests = [f"manifests/{n}" for n in infos]
    p = plan((20, 20), manifests, [s.key for s in path + [stray]], chunks, infos, {"10-1", "20-1"})
    assert p.anchor == "15-1"  # the newest complete one on the path
    assert p.kept == {"10-1", "15-1", "20-1"} and p.floor == 10 and p.incomplete == {"20-1"}
    assert p.manifests == ["manifests/12-1", "manifests/5-1"]
    assert p.segments == sorted([path[0].key, stray.key])  # [6, 10] ends at the floor: restore reads it
    assert p.chunks == [f"chunks/{'a' * 32}", f"chunks/{'d' * 32}"]
    assert p.kept_segments == path[1:]
    extra = plan((20, 20), manifests, [s.key for s in path], chunks, infos, {"20-1"}, keep_extra=2)
    assert extra.kept == {"5-1", "10-1", "15-1", "20-1"} and extra.segments == [] and extra.floor == 5


def test_plan_without_a_restorable_manifest_deletes_nothing():
    path = [seg(1, 5, 0, 5)]
    damaged = {"5-1": ManifestInfo(5, None, frozenset(), damaged=True)}
    for infos, head in ((damaged, (5, 5)), ({}, (5, 5)), (damaged, (9, 9))):
        p = plan(head, ["manifests/5-1"], [path[0].key], [], infos, set())
        assert p.anchor is None and (p.manifests, p.segments, p.chunks) == ([], [], [])


def test_keep_extra_and_collect_every_are_checked(tmp_path):
    with pytest.raises(ValueError, match="keep_extra"):
        Collector(None, keep_extra=-1)
    with open_store((tmp_path / "r").as_uri()) as store:
        with open_journal(tmp_path / "a") as journal:
            for bad in (-1.0, True, "1"):
                with pytest.raises(ValueError, match="collect_every"):
                    Shipper(store, journal.path, journal.log, journal.snapshots, lambda: 0, term=1,
                            collect_every=bad)
