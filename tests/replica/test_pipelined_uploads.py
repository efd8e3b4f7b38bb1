"""Pipelined uploads (replay.replica.uploads) and archive files shipped as they are.

Several uploads run at once, but what head.json claims never gets ahead of them: a
segment counts only once it and every segment before it were stored, and a failed upload
in flight fails the round with the head still naming a chain whose every object exists.
"""

from __future__ import annotations

import os
import shutil
import time
import threading

import pytest

from replay.replica.chain import MANIFESTS, SEGMENTS, parse_manifest_key, parse_segment_key, walk_back
from replay.replica.errors import ReplicaUnavailableError
from replay.replica.head import HEAD_KEY, parse_head
from replay.replica.objects import FileObjectStore
from replay.replica.restore import restore
from replay.replica.uploads import Uploads

from .test_shipping import apply_n, assert_state, open_journal, restored_state

pytestmark = pytest.mark.timeout(120)


class _ScriptedStore:
    """put_if_absent per key: waits for `gates[key]` when given, raises `fail[key]` when given."""

    def __init__(self, gates=None, fail=None):
        self.gates, self.fail = gates or {}, fail or {}
        self.stored: list[str] = []
        self.lock = threading.Lock()

    def put_if_absent(self, key, data):
        if key in self.gates:
            assert self.gates[key].wait(30), f"gate of {key} never opened"
        if key in self.fail:
            raise self.fail[key]
        with self.lock:
            self.stored.append(key)
        return True


def test_done_runs_in_submission_order_over_the_completed_prefix_only():
    release_a = threading.Event()
    store = _ScriptedStore(gates={"a": release_a}, fail={"b": ReplicaUnavailableError("file:///x", "gone", "b")})
    done: list[str] = []
    with pytest.raises(ReplicaUnavailableError, match="gone"):
        with Uploads(store, in_flight=4) as uploads:
            for key in ("a", "b", "c"):
                uploads.submit(key, b"x", lambda created, key=key: done.append(key))
            release_a.set()  # b failed and c succeeded while a was still running
    assert done == ["a"], "a put after a failed one must never count, even when it was stored"
    assert sorted(store.stored) == ["a", "c"]


def test_submit_waits_when_in_flight_puts_reach_the_bound():
    gates = {k: threading.Event() for k in "abc"}
    store = _ScriptedStore(gates=gates)
    done: list[str] = []
    submitted = threading.Event()

    def producer():
        with Uploads(store, in_flight=2) as uploads:
            for key in "abc":
                uploads.submit(key, b"x", lambda created, key=key: done.append(key))
            submitted.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not submitted.wait(0.2), "a third put was handed out while two were in flight"
    gates["a"].set()
    assert submitted.wait(30)
    gates["b"].set()
    gates["c"].set()
    thread.join(30)
    assert done == ["a", "b", "c"]


def test_an_error_in_the_block_waits_for_puts_in_flight_and_counts_nothing_more():
    gate = threading.Event()
    store = _ScriptedStore(gates={"a": gate})
    done: list[str] = []
    uploads = Uploads(store)
    with pytest.raises(KeyError):
        with uploads:
            uploads.submit("a", b"x", lambda created: done.append("a"))
            threading.Timer(0.05, gate.set).start()
            raise KeyError("the producer failed")
    assert store.stored == ["a"] and done == []


class _FailingSecondSegment(FileObjectStore):
    """A file replica whose second segment upload fails once, and which checks at every
    head.json write that each segment on the new head's path is stored."""

    def __init__(self, directory):
        super().__init__(directory)
        self.segment_puts = 0
        self.failed: str | None = None
        self.heads = 0
        self.violations: list[str] = []  # checked by the test: an assert here would only fail a round

    def put_if_absent(self, key, data):
        if key.startswith(SEGMENTS) and self.failed is None:
            self.segment_puts += 1
            if self.segment_puts == 2:
                self.failed = key
                raise ReplicaUnavailableError(self.url, "injected failure", key)
        return super().put_if_absent(key, data)

    def put_if_match(self, key, data, etag):
        if key == HEAD_KEY:
            head = parse_head(data)
            listed = [s for s in map(parse_segment_key, self.list(SEGMENTS)) if s is not None]
            path = walk_back(listed, head.index, head.checksum)
            manifests = {parse_manifest_key(k)[0] for k in self.list(MANIFESTS) if parse_manifest_key(k)}
            if head.index and not (path and path[0].first - 1 in manifests):
                self.violations.append(f"head.json at {head.index}: its path does not reach a stored manifest")
            self.heads += 1
        return super().put_if_match(key, data, etag)


def test_a_failed_upload_in_flight_never_lets_the_head_past_a_missing_object(tmp_path):
    # Many small compactions: the local archive holds several files, shipped in one round.
    journal = open_journal(tmp_path / "j", every=1000)
    for _ in range(12):
        apply_n(journal, 5)
        journal.snapshot()  # compacts: each leaves an archive file (local merges join the oldest)
    journal.flush()
    assert len(journal.log.segments()) >= 3, "the workload should leave several archive files"
    store = _FailingSecondSegment(tmp_path / "replica")
    shipper = _start(journal, store)
    try:
        shipper.wait(journal.index, timeout=60)
    finally:
        shipper.close(10)
    archived = {info.path.read_bytes() for info in journal.log.segments()}
    journal.close()
    assert store.failed is not None, "the injected failure never happened"
    assert store.heads >= 1 and store.violations == []
    with FileObjectStore(tmp_path / "replica", readonly=True) as reader:
        shipped = [reader.get(key, 1 << 30)[0] for key in reader.list(SEGMENTS)]
    assert any(data in archived for data in shipped), "no archive file was shipped as it is"
    report = restore(store.url, tmp_path / "restored")
    assert report.head_index == 60
    state, restored = restored_state(tmp_path / "restored")
    assert_state(state, 60)
    restored.close()


def _start(journal, store):
    from replay.replica.shipper import Shipper
    shipper = Shipper(store, journal.path, journal.log, journal.snapshots,
                      lambda: min(journal.log.durable_index, journal.index), interval=0.05,
                      term=journal.log.term)
    shipper.start()
    return shipper


def sealed_through_10(archive) -> list[str]:
    """The sealed archive file names, oldest first, once the file of entries 6..10 is among them.

    The compaction that follows a snapshot runs in the background: under load its temp file
    (".<first>-<last>.seg.tmp") may still be there and 6..10 not yet sealed."""
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("00000000000000000006-00000000000000000010") for p in archive.iterdir()):
        assert time.monotonic() < deadline, sorted(p.name for p in archive.iterdir())
        time.sleep(0.01)
    return sorted(p.name for p in archive.iterdir() if not p.name.startswith("."))


def test_an_archive_file_of_another_history_is_never_counted(tmp_path):
    # A's archive file 6..10 is swapped for B's: B shares A's history through 5, then
    # diverges. The file is self-consistent and chains from A's entry 5, but what follows it
    # in A does not chain from it: a head must never name it (nor anything after it).
    a = open_journal(tmp_path / "a", every=1000)
    apply_n(a, 5)
    a.snapshot()
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with open_journal(tmp_path / "b", every=1000) as b:
        for _ in range(5):
            b.apply("add", value=1234.5)
        b.snapshot()
    a = open_journal(tmp_path / "a", every=1000)
    for _ in range(2):
        apply_n(a, 5)
        a.snapshot()
    apply_n(a, 5)
    a.flush()
    names = sealed_through_10(tmp_path / "a" / "log" / "archive")
    foreign = tmp_path / "b" / "log" / "archive" / names[1]
    assert names[1].startswith("00000000000000000006-00000000000000000010") and foreign.exists()
    os.replace(foreign, tmp_path / "a" / "log" / "archive" / names[1])
    store = FileObjectStore(tmp_path / "replica")
    shipper = _start(a, store)
    try:
        assert shipper.wait(5, timeout=60) >= 5
    finally:
        shipper.close(30)  # one last round: it still stops before the foreign file
    a.close()
    with FileObjectStore(tmp_path / "replica", readonly=True) as reader:
        head = parse_head(reader.get(HEAD_KEY, 1 << 16)[0])
    assert head.index == 5
    report = restore(store.url, tmp_path / "restored")
    assert report.head_index == 5
    state, restored = restored_state(tmp_path / "restored")
    assert_state(state, 5)
    restored.close()
