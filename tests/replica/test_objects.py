"""The ObjectStore contract (replay/replica/objects.py): one conformance suite, run against
every backend (a directory via file://, S3 via moto's real HTTP server on 127.0.0.1),
then the checks only one backend can have (hostile files in a directory, a dead or
restarted S3 endpoint, the conditional writes moto's server itself enforces)."""

from __future__ import annotations

import os
import threading

import pytest

from replay.replica import (
    FileObjectStore,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReplicaDamageError,
    ReplicaUnavailableError,
    open_store,
)

pytestmark = pytest.mark.timeout(60)

HOSTILE_KEYS = ["", "/abs", "a//b", "a/", "..", "a/../b", "./a", "a/./b", ".hidden", "a/.tmp",
                "sp ace", "back\\slash", "nul\x00", "new\nline", "é", "a" * 1025, "x/" + "b" * 256]


@pytest.fixture
def store(replica_url):
    url, options = replica_url
    s = open_store(url, options)
    yield s
    s.close()


# -- conformance: every backend --------------------------------------------------------

def test_put_if_absent_creates_once_and_never_overwrites(store):
    assert store.put_if_absent("chunks/ab/abc", b"first") is True
    assert store.put_if_absent("chunks/ab/abc", b"second") is False
    data, etag = store.get("chunks/ab/abc", 100)
    assert data == b"first"
    assert isinstance(etag, str) and etag
    assert store.put_if_absent("empty", b"") is True
    assert store.get("empty", 0)[0] == b""


def test_put_if_match_create_replace_stale_missing(store):
    e1 = store.put_if_match("head.json", b'{"term": 1}', None)
    assert store.get("head.json", 100) == (b'{"term": 1}', e1)
    with pytest.raises(PreconditionFailedError, match="head.json"):
        store.put_if_match("head.json", b'{"term": 9}', None)      # create-only: it exists
    e2 = store.put_if_match("head.json", b'{"term": 2}', e1)
    assert e2 != e1
    assert store.get("head.json", 100) == (b'{"term": 2}', e2)
    with pytest.raises(PreconditionFailedError, match="head.json"):
        store.put_if_match("head.json", b'{"term": 3}', e1)        # stale etag
    assert store.get("head.json", 100)[0] == b'{"term": 2}'
    with pytest.raises(PreconditionFailedError, match="nothere"):
        store.put_if_match("nothere", b"x", e2)                    # replace of a missing object
    with pytest.raises(ObjectNotFoundError):
        store.get("nothere", 10)
    assert store.put_if_match("head.json", b'{"term": 3}', e2) != e2


def test_get_limit_and_missing(store):
    store.put_if_absent("seg", b"x" * 1000)
    assert store.get("seg", 1000)[0] == b"x" * 1000               # exactly the limit is fine
    with pytest.raises(ObjectTooLargeError, match="seg") as info:
        store.get("seg", 999)
    assert info.value.limit == 999
    with pytest.raises(ObjectTooLargeError):
        store.get("seg", 0)
    with pytest.raises(ObjectNotFoundError, match="missing/key"):
        store.get("missing/key", 10)
    with pytest.raises(ValueError):
        store.get("seg", -1)


def test_list_prefix_sorted(store):
    keys = ["segments/00000000000000000011-b.seg", "head.json", "chunks/ff/ff01", "chunks/0a/0a99",
            "segments/00000000000000000002-a.seg", "manifests/10-2", "manifests/9-1", "chunksX"]
    for k in keys:
        assert store.put_if_absent(k, k.encode())
    assert store.list("") == sorted(keys)
    assert store.list("chunks/") == ["chunks/0a/0a99", "chunks/ff/ff01"]
    assert store.list("chunks") == ["chunks/0a/0a99", "chunks/ff/ff01", "chunksX"]
    assert store.list("segments/0000000000000000001") == ["segments/00000000000000000011-b.seg"]
    assert store.list("manifests/1") == ["manifests/10-2"]
    assert store.list("nothing/") == []
    assert store.list("head.json") == ["head.json"]


def test_delete_missing_is_fine(store):
    store.delete("never/was")
    store.put_if_absent("a/b", b"1")
    store.delete("a/b")
    store.delete("a/b")
    with pytest.raises(ObjectNotFoundError):
        store.get("a/b", 10)
    assert store.list("") == []
    assert store.put_if_absent("a/b", b"2") is True                # a deleted key can be created again


@pytest.mark.parametrize("method", ["put_if_absent", "put_if_match_create"])
def test_concurrent_creators_exactly_one_wins(store, method):
    rounds, results, errors = 8, [], []
    barrier = threading.Barrier(2)

    def worker(tag):
        for i in range(rounds):
            barrier.wait()
            try:
                if method == "put_if_absent":
                    ok = store.put_if_absent(f"race/{i}", tag * 4096)
                else:
                    try:
                        store.put_if_match(f"race/{i}", tag * 4096, None)
                        ok = True
                    except PreconditionFailedError:
                        ok = False
                results.append((i, tag, ok))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in (b"A", b"B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for i in range(rounds):
        winners = [tag for (j, tag, ok) in results if j == i and ok]
        assert len(winners) == 1, (i, results)
        assert store.get(f"race/{i}", 5000)[0] == winners[0] * 4096  # the winner's whole object


def test_concurrent_replace_one_etag_one_winner(store):
    etag = store.put_if_match("head.json", b"term 1", None)
    barrier, wins, errors = threading.Barrier(2), [], []

    def worker(tag):
        barrier.wait()
        try:
            wins.append((tag, store.put_if_match("head.json", tag, etag)))
        except PreconditionFailedError:
            pass
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in (b"term 2 owner A", b"term 2 owner B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(wins) == 1, (wins, errors)
    assert store.get("head.json", 100) == wins[0]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_refused(store, key):
    for call in (lambda: store.put_if_absent(key, b"x"), lambda: store.put_if_match(key, b"x", None),
                 lambda: store.get(key, 10), lambda: store.delete(key)):
        with pytest.raises(ValueError, match="invalid object key"):
            call()
    assert store.list("") == []


@pytest.mark.parametrize("prefix", ["/", "../", "a//", ".tmp/", "a/../"])
def test_hostile_prefixes_refused(store, prefix):
    with pytest.raises(ValueError, match="invalid key prefix"):
        store.list(prefix)


def test_binary_content_roundtrips(store):
    data = bytes(range(256)) * 4100                                # ~1 MiB, every byte value
    e = store.put_if_match("blob", data, None)
    assert store.get("blob", len(data)) == (data, e)


def test_open_reader_states_the_size_first_and_streams_in_order(store):
    data = bytes(range(256)) * 4100
    store.put_if_absent("seg", data)
    with store.open_reader("seg", len(data)) as reader:
        assert reader.size == len(data) and reader.key == "seg"
        head = reader.read(80)
        assert head == data[:len(head)] and 0 < len(head) <= 80
        parts = [head]
        while part := reader.read(1 << 16):
            assert len(part) <= 1 << 16
            parts.append(part)
    assert b"".join(parts) == data
    with pytest.raises(ObjectTooLargeError, match="seg"):
        store.open_reader("seg", len(data) - 1)                    # refused by its size, before any body byte
    with pytest.raises(ObjectNotFoundError, match="nothere"):
        store.open_reader("nothere", 10)
    store.put_if_absent("empty", b"")
    with store.open_reader("empty", 0) as reader:
        assert reader.size == 0 and reader.read(80) == b""


# -- file backend only -----------------------------------------------------------------

@pytest.fixture
def fstore(tmp_path):
    s = open_store((tmp_path / "rep").as_uri())
    yield s
    s.close()


def test_file_symlink_object_is_damage_never_followed(fstore, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the replica")
    os.symlink(secret, fstore.root / "head.json")
    with pytest.raises(ReplicaDamageError, match="head.json"):
        fstore.get("head.json", 100)
    with pytest.raises(ReplicaDamageError, match="head.json"):
        fstore.put_if_match("head.json", b"x", "0" * 32)
    assert fstore.put_if_absent("head.json", b"x") is False        # the name is taken; the link is untouched
    assert secret.read_bytes() == b"outside the replica"
    assert fstore.list("") == ["head.json"]                        # listed, so a reader sees the damage
    fstore.delete("head.json")                                     # removes the link, not its target
    assert secret.exists()


def test_file_symlinked_directory_is_damage(fstore, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"outside")
    os.symlink(outside, fstore.root / "chunks")
    with pytest.raises(ReplicaDamageError, match="chunks"):
        fstore.get("chunks/x", 100)
    with pytest.raises(ReplicaDamageError, match="chunks"):
        fstore.put_if_absent("chunks/y", b"y")
    assert not (outside / "y").exists()
    (outside / "sub").mkdir()
    (outside / "sub" / "z").write_bytes(b"z")
    for prefix in ("chunks/", "chunks/sub/", "chunks/s"):           # never followed, never "no objects"
        with pytest.raises(ReplicaDamageError, match=r"chunks is damaged: is a symbolic link .*unsafe"):
            fstore.list(prefix)
    assert fstore.list("") == ["chunks"]                           # the link itself, which get() calls damage
    with pytest.raises(ReplicaDamageError, match="chunks"):
        fstore.get("chunks", 100)


@pytest.mark.timeout(10)
def test_file_fifo_and_directory_objects_are_damage_without_blocking(fstore):
    os.mkfifo(fstore.root / "fifo")                                # opening it for reading would block
    with pytest.raises(ReplicaDamageError, match="fifo"):
        fstore.get("fifo", 100)
    (fstore.root / "dir").mkdir()
    with pytest.raises(ReplicaDamageError, match="dir"):
        fstore.get("dir", 100)
    (fstore.root / "file").write_bytes(b"f")
    with pytest.raises(ReplicaDamageError, match="file"):
        fstore.get("file/below", 100)                              # a file where a directory should be


def test_file_get_reads_at_most_limit_plus_one(fstore, monkeypatch):
    fstore.put_if_absent("big", b"z" * (1 << 20))
    asked = []
    real = os.read

    def counting(fd, n):
        asked.append(n)
        return real(fd, n)

    monkeypatch.setattr(os, "read", counting)
    with pytest.raises(ObjectTooLargeError):
        fstore.get("big", 100)
    assert sum(asked) <= 101


def test_file_get_holds_one_copy_of_the_object(fstore):
    """Before: 1 MiB reads joined into a second copy (peak RSS twice the object)."""
    import json
    import subprocess
    import sys
    size = 256 << 20
    with open(fstore.root / "big", "wb") as f:
        f.truncate(size)
    child = ("import json, resource, sys\n"
             "from replay.replica.objects import FileObjectStore\n"
             "store = FileObjectStore(sys.argv[1], readonly=True)\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "data, _ = store.get('big', 1 << 30)\n"
             "print(json.dumps([len(data), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", child, str(fstore.root)], capture_output=True, text=True,
                          timeout=50, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    length, before, peak = json.loads(done.stdout)
    assert length == size
    assert (peak - before) << 10 < size * 1.4, f"peak grew {(peak - before) >> 10} MiB for a {size >> 20} MiB object"


def test_file_partial_objects_are_never_visible(fstore):
    """A writer's temp file lives in .tmp/ until it is whole and fsynced; a listing never shows it."""
    (fstore.root / ".tmp" / "abandoned.tmp").write_bytes(b"half")
    assert fstore.list("") == []
    fstore.put_if_absent("k", b"v" * 10000)
    assert os.listdir(fstore.root / ".tmp") == ["abandoned.tmp"]   # the writer's own temp is gone


def test_file_url_forms(tmp_path):
    with pytest.raises(ValueError, match="absolute"):
        open_store("file:relative/dir")
    with pytest.raises(ValueError, match="local absolute path"):
        open_store("file://host/dir")
    with pytest.raises(ValueError, match="unsupported replica URL"):
        open_store("ftp://host/dir")
    with pytest.raises(ValueError, match="unknown options"):
        open_store((tmp_path / "r").as_uri(), {"endpoint_url": "x"})
    with open_store((tmp_path / "r").as_uri()) as s:
        assert isinstance(s, FileObjectStore)
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(ReplicaUnavailableError, match="afile"):
        open_store((tmp_path / "afile" / "sub").as_uri())
