"""What restore checks before it downloads anything, and what a reader never creates
(issue 19, items 7 and 8): a clear error naming the path and the remedy, never a raw
OSError after the whole restore, and no directory left behind by a typo."""

from __future__ import annotations

import os

import pytest

from replay.replica.errors import ReplicaDamageError, ReplicaUnavailableError, RestoreTargetError
from replay.replica.objects import FileObjectStore
from replay.replica.restore import restore

from .test_shipping import apply_n, assert_state, open_journal, ship

pytestmark = pytest.mark.timeout(120)


class CountingStore(FileObjectStore):
    """A read-only directory store that records every read request (the key or prefix)."""

    def __init__(self, directory):
        super().__init__(directory, readonly=True)
        self.reads = []

    def get(self, key, limit):
        self.reads.append(key)
        return super().get(key, limit)

    def open_reader(self, key, limit):
        self.reads.append(key)
        return super().open_reader(key, limit)

    def list(self, prefix):
        self.reads.append(prefix)
        return super().list(prefix)


@pytest.fixture(scope="module")
def replica_master(tmp_path_factory):
    """A directory replica of a 12-entry journal, fully shipped (copied per test)."""
    root = tmp_path_factory.mktemp("replica-master")
    with open_journal(root / "a") as journal:
        shipper = ship(journal, (root / "replica").as_uri(), None)
        apply_n(journal, 12)
        journal.flush()
        shipper.wait(12, timeout=60)
        shipper.close(timeout=30)
    return root / "replica"


@pytest.fixture
def replica(replica_master, tmp_path):
    import shutil
    copy = tmp_path / "replica"
    shutil.copytree(replica_master, copy, symlinks=True)
    return copy


def test_restore_into_the_current_directory_is_refused_before_any_download(replica, tmp_path, monkeypatch):
    """Refused once head.json shows there is something to restore, before any other read
    (before: the whole restore ran, then "[Errno 22] Invalid argument: '.'")."""
    here = tmp_path / "new"
    here.mkdir()
    monkeypatch.chdir(here)
    store = CountingStore(replica)
    for given in (".", "./", str(here)):
        with pytest.raises(RestoreTargetError, match="current directory") as info:
            restore(store, given)
        message = str(info.value)
        assert repr(given) in message and str(here) in message and str(here / "journal") in message
    assert store.reads == ["head.json"] * 3
    assert list(here.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["new", "replica"]
    report = restore(store, "journal")                            # the remedy the message gives works
    assert report.head_index == 12
    with open_journal(here / "journal") as copy:
        assert_state(copy.state, 12)


@pytest.mark.parametrize("leftover", ["file", "symlink", "dangling-symlink"])
def test_a_leftover_staging_name_that_is_not_a_directory_is_refused_and_kept(replica, tmp_path, leftover):
    """`.DIR.restoring` is where restore works; an interrupted restore leaves a directory
    there (removed and redone), anything else is not ours: named, with the remedy, left alone."""
    staging = tmp_path / ".b.restoring"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"x")
    if leftover == "file":
        staging.write_bytes(b"not ours")
    elif leftover == "symlink":
        staging.symlink_to(elsewhere)
    else:
        staging.symlink_to(tmp_path / "missing")
    store = CountingStore(replica)
    with pytest.raises(RestoreTargetError) as info:
        restore(store, tmp_path / "b")
    message = str(info.value)
    assert str(staging) in message and f"rm {staging}" in message
    assert ("symbolic link" if "symlink" in leftover else "not a directory") in message
    assert store.reads == []
    assert os.path.lexists(staging) and (elsewhere / "precious").read_bytes() == b"x"
    assert not (tmp_path / "b").exists()


def test_a_leftover_staging_directory_is_an_interrupted_restore_and_is_redone(replica, tmp_path):
    staging = tmp_path / ".b.restoring"
    (staging / "snapshots").mkdir(parents=True)
    (staging / "log-half-written").write_bytes(b"x")
    assert restore(replica.as_uri(), tmp_path / "b").head_index == 12
    assert not staging.exists()


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_segments_prefix_that_is_a_symlink_or_a_file_is_damage_naming_it(replica, tmp_path, kind):
    """Before: "no segment ends at its index" (the listing skipped the link as if empty)."""
    moved = tmp_path / "moved-segments"
    (replica / "segments").rename(moved)
    if kind == "symlink":
        (replica / "segments").symlink_to(moved)
    else:
        (replica / "segments").write_bytes(b"")
    with pytest.raises(ReplicaDamageError) as info:
        restore(replica.as_uri(), tmp_path / "b")
    assert info.value.key == "segments"
    assert ("is a symbolic link" if kind == "symlink" else "is not a directory") in str(info.value)
    assert "unsafe" in str(info.value) and "no segment ends" not in str(info.value)
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.restoring").exists()


def test_a_journal_opened_in_the_current_directory_on_a_new_replica_starts_there(tmp_path, monkeypatch):
    """Nothing to restore (no head.json): the current directory is fine, as before."""
    (tmp_path / "replica").mkdir()
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with open_journal(".", replica=(tmp_path / "replica").as_uri(), ship_interval=0.05) as journal:
        apply_n(journal, 3)
        journal.flush(replica=True, timeout=60)
    assert (tmp_path / "here" / "log").is_dir() and (tmp_path / "replica" / "head.json").is_file()


def test_restore_from_a_missing_directory_replica_creates_nothing(tmp_path):
    typo = tmp_path / "typo" / "replica"
    with pytest.raises(ReplicaUnavailableError, match=f"no directory '{typo}'"):
        restore(typo.as_uri(), tmp_path / "b")
    assert not (tmp_path / "typo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_read_only_file_store_writes_nothing(replica):
    store = FileObjectStore(replica, readonly=True)
    before = sorted(p.relative_to(replica) for p in replica.rglob("*"))
    for call in (lambda: store.put_if_absent("x", b"1"), lambda: store.put_if_match("head.json", b"1", None),
                 lambda: store.delete("head.json")):
        with pytest.raises(ValueError, match="read-only"):
            call()
    assert store.list("") and sorted(p.relative_to(replica) for p in replica.rglob("*")) == before
