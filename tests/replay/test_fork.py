"""replay.fork: a new journal whose history is the source's entries up to I, the source untouched.

The case it exists for: bad data found after a snapshot, in a journal whose archive has
sealed (and LMDB dropped) everything up to that snapshot, where `replay.truncate` refuses.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import eventlog
import replay
from eventlog import EventLog
from replay.envelope import FORK_OP
from tests.chunkcopies import chunk_files, region

from .models import assert_same, make_ops, make_state

ROOT = Path(__file__).resolve().parents[2]
STEPS = 30  # snapshots every 8: 0, 8, 16, 24 (keep_last=3 keeps 8, 16, 24 and the initial 0)


def step(journal: replay.Journal, i: int) -> None:
    """The i-th step of the run (0-based), the same in every run."""
    if i % 4 == 3:
        journal.apply("add", row=i % 4, value=float(i))
    else:
        journal.apply("train_step", ids=journal.state["data"].peek(8), seed=i)


def run(path, steps: int, start: int = 0, **options) -> None:
    """Apply steps start..start+steps-1 under a journal at `path`, then close it."""
    options.setdefault("snapshot", replay.Every(entries=8))
    options.setdefault("async_snapshots", False)
    options.setdefault("snapshot_on_close", False)
    options.setdefault("durability", "sync")
    with replay.Journal.open(path, state=make_state(), ops=make_ops(), **options) as journal:
        assert journal.index == start
        for i in range(start, start + steps):
            step(journal, i)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(_, at): the fingerprint of an uninterrupted run's state at entry `at` (a
    journal of its own, never forked; each `at` is run once per module)."""
    from replay.determinism import fingerprint

    cache: dict[int, dict] = {}

    def at_index(_unused, at: int):
        if at not in cache:
            path = tmp_path_factory.mktemp("reference") / f"run-{at}"
            run(path, at, snapshot=replay.Every(entries=1000))
            state = make_state()
            with replay.Journal.open(path, state=state, ops=make_ops(), snapshot_on_close=False) as journal:
                assert journal.index == at
            cache[at] = fingerprint(state)
        return cache[at]

    return at_index


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every file under `root` (but LMDB's reader table, which any reader writes): its bytes'
    hash, size, mode and mtime; every directory too. Equal before and after means untouched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = ("dir",)
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel == os.path.join("log", "lock.mdb"):
                continue
            st = os.lstat(path)
            with open(path, "rb") as f:
                out[rel] = (hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def source_master(tmp_path_factory) -> Path:
    """30 entries in two terms (20, a restart, 10 more), snapshots every 8, archive compaction
    through the newest snapshot: entries 1..24 are sealed, only 25..30 are in LMDB."""
    path = tmp_path_factory.mktemp("fork") / "src"
    run(path, 20)
    run(path, 10, start=20)
    with EventLog.open(path / "log", readonly=True) as log:
        assert (log.first_index, log.live_first_index, log.last_index) == (1, 25, 30)
    return path


@pytest.fixture
def source(source_master, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(source_master, copy)
    return copy


def test_truncate_cannot_roll_back_past_the_newest_snapshot_but_fork_can(source, tmp_path, reference):
    """The issue's case: bad data at entry 22, after snapshot 16, the log sealed through 24."""
    with pytest.raises(replay.RecoveryError):
        replay.truncate(source, after=21)
    report = replay.fork(source, at=21, dest=tmp_path / "new", reason="bad shard at 22")
    assert (report.at, report.first_index, report.fork_index, report.source_last_index) == (21, 1, 22, 30)
    assert report.snapshots == ["0-0", "8-1", "16-1"]
    state = make_state(seed=5)
    with replay.Journal.open(tmp_path / "new", state=state, ops=make_ops()) as journal:
        assert journal.recovery.snapshot_index == 16
        assert journal.index == 22  # 21 entries and the replay.fork record
        assert journal.count() == 21
    assert_same(state, reference(tmp_path, 21))


@pytest.mark.parametrize("at", [1, 8, 13, 24, 27, 30])
def test_fork_recovers_the_state_at_i_bit_exactly_and_goes_on(source, tmp_path, at, reference):
    """At a snapshot, inside a sealed segment, at a segment's end, in LMDB, at the last entry:
    the fork opens to the uninterrupted run's state at `at`, then applies on as that run would."""
    dest = tmp_path / "new"
    replay.fork(source, at=at, dest=dest)
    state = make_state(seed=3)
    with replay.Journal.open(dest, state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.index == at + 1
        assert_same(state, reference(tmp_path, at))
        for i in range(at, STEPS + 2):
            step(journal, i)
    # Going on from the fork is the uninterrupted run going on: the fork record changed nothing.
    state = make_state()
    with replay.Journal.open(dest, state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    assert_same(state, reference(tmp_path, STEPS + 2))


def test_the_source_is_untouched_byte_for_byte(source, tmp_path, reference):
    before = tree_digest(source)
    replay.fork(source, at=21, dest=tmp_path / "new")
    with replay.Journal.open(tmp_path / "new", state=make_state(), ops=make_ops()) as journal:
        step(journal, 21)
        journal.snapshot()
    assert tree_digest(source) == before
    # And the source still recovers its own state at 30.
    state = make_state()
    with replay.Journal.open(source, state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.index == 30
    assert_same(state, reference(tmp_path, 30))


def test_the_fork_record_names_the_source_and_its_term_in_a_higher_term(source, tmp_path):
    with EventLog.open(source / "log", readonly=True) as log:
        source_term = log.term
        copied = [(e.index, e.term, e.op, e.payload) for e in log.entries(1, 19)]
        checksum = log.checksum_at(18)
    report = replay.fork(source, at=18, dest=tmp_path / "new", reason="bad shard")
    with EventLog.open(tmp_path / "new" / "log", readonly=True) as log:
        assert [(e.index, e.term, e.op, e.payload) for e in log.entries(1, 19)] == copied
        assert log.checksum_at(18) == checksum  # the chain continues: the same history
        record = log.entry(19)
        assert log.last_index == 19
    assert record.op == FORK_OP == "replay.fork"
    assert record.payload == {"v": 1, "p": {"source": str(source.resolve()), "source_term": source_term, "at": 18,
                                            "source_last_index": 30, "reason": "bad shard"}}
    assert record.term == report.term == source_term + 1 > max(t for _, t, _, _ in copied)
    history = list(replay.entries(tmp_path / "new"))
    assert history[-1].op == "replay.fork"


def test_chunks_and_segments_are_hard_linked_on_one_filesystem_and_copied_otherwise(source, tmp_path, monkeypatch,
                                                                                  reference):
    report = replay.fork(source, at=21, dest=tmp_path / "linked")
    assert report.linked > 0 and report.copied == 0
    linked = report.linked
    store = tmp_path / "linked" / "snapshots"
    held = list(chunk_files(store))  # the files holding chunks: packs (and loose files of older stores)
    assert held and all(os.stat(p).st_nlink >= 2 for p in held)
    assert all(os.stat(p).st_ino == (source / "snapshots" / os.path.relpath(p, store)).stat().st_ino for p in held)

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")  # EXDEV: another filesystem

    # Whole archive segments (1..8, 9..16; 17..21 is cut from 17..24) are shared the same way.
    assert report.segments == 3 and report.segments_linked == 2
    for name in (f"{1:020d}-{8:020d}.seg", f"{9:020d}-{16:020d}.seg"):
        assert (tmp_path / "linked" / "log" / "archive" / name).stat().st_ino == \
            (source / "log" / "archive" / name).stat().st_ino

    monkeypatch.setattr(os, "link", no_links)
    report = replay.fork(source, at=21, dest=tmp_path / "copied")
    assert report.linked == 0 and report.copied == linked and report.segments_linked == 0
    assert all(p.stat().st_nlink == 1 for p in (tmp_path / "copied").rglob("*") if p.is_file())
    state = make_state()
    with replay.Journal.open(tmp_path / "copied", state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    assert_same(state, reference(tmp_path, 21))


def test_environment_is_carried_and_the_replica_record_is_not(source, tmp_path):
    (source / "replica.json").write_text('{"format": 1, "url": "file:///somewhere", "owner": "abc", "claim": null}')
    replay.fork(source, at=21, dest=tmp_path / "new")
    assert (tmp_path / "new" / "environment.json").read_bytes() == (source / "environment.json").read_bytes()
    assert not (tmp_path / "new" / "replica.json").exists()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["environment.json", "log", "snapshots"]


def test_a_damaged_snapshot_is_skipped_for_an_older_one(source, tmp_path, reference):
    store_info = [i for i in _infos(source) if i.index == 16][0]
    _damage_a_chunk_of(source, store_info)
    report = replay.fork(source, at=21, dest=tmp_path / "new")
    assert report.snapshots == ["0-0", "8-1"] and len(report.skipped) == 1 and "16-1" in report.skipped[0]
    state = make_state()
    with replay.Journal.open(tmp_path / "new", state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.recovery.snapshot_index == 8
    assert_same(state, reference(tmp_path, 21))


def test_a_damaged_manifest_is_skipped_and_said(source, tmp_path, reference):
    manifest = source / "snapshots" / "manifests" / "16-1"
    data = bytearray(manifest.read_bytes())
    data[-3] ^= 0x40
    os.chmod(manifest, 0o644)
    manifest.write_bytes(bytes(data))
    report = replay.fork(source, at=21, dest=tmp_path / "new")
    assert report.snapshots == ["0-0", "8-1"] and len(report.skipped) == 1 and "16-1" in report.skipped[0]
    state = make_state()
    with replay.Journal.open(tmp_path / "new", state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    assert_same(state, reference(tmp_path, 21))


@pytest.mark.parametrize("damaged", ["archive", "lmdb"])
def test_damaged_history_is_never_copied(source, tmp_path, damaged):
    """A bit flipped in a sealed segment (copied as a file) or in LMDB (sealed by the fork):
    eventlog's damage error naming where, and nothing made."""
    if damaged == "archive":
        path = source / "log" / "archive" / f"{9:020d}-{16:020d}.seg"
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        expected, at = r"segment.*9\.\.16", 21
    else:
        import lmdb

        env = lmdb.open(str(source / "log"), max_dbs=2)
        with env.begin(write=True, db=env.open_db(b"entries")) as txn:
            value = bytearray(txn.get((26).to_bytes(8, "big")))
            value[-1] ^= 0x01
            txn.put((26).to_bytes(8, "big"), bytes(value))
        env.close()
        expected, at = "entry 26", 27
    with pytest.raises(eventlog.LogError, match=expected):
        replay.fork(source, at=at, dest=tmp_path / "new")
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.forking").exists()


def test_a_log_without_its_early_history_forks_from_its_oldest_snapshot(tmp_path, reference):
    """archive=None deletes compacted entries: the log starts after the oldest kept snapshot,
    and a fork below it is refused, naming I and the range that can be forked."""
    path = tmp_path / "src"
    run(path, 30, archive=None, keep_last=2)
    with EventLog.open(path / "log", readonly=True) as log:
        first, last = log.first_index, log.last_index
    assert first == 17 and last == 30
    with pytest.raises(replay.ForkIndexError, match=r"fork at 16: .*entries 17\.\.30.* can be taken at 17\.\.30"):
        replay.fork(path, at=16, dest=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    replay.fork(path, at=20, dest=tmp_path / "new")
    state = make_state()
    with replay.Journal.open(tmp_path / "new", state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.recovery.snapshot_index == 16
    assert_same(state, reference(tmp_path, 20))
    # Snapshot 16 is the only start for 17..23: damaged, a fork there has nothing to rebuild from.
    _damage_a_chunk_of(path, [i for i in _infos(path) if i.index == 16][0])
    with pytest.raises(replay.ForkError, match=r"fork at 20: every snapshot that could rebuild it is damaged.*16-"):
        replay.fork(path, at=20, dest=tmp_path / "again")
    assert not (tmp_path / "again").exists() and not (tmp_path / ".again.forking").exists()


def test_a_log_kept_in_lmdb_forks_too(tmp_path, reference):
    path = tmp_path / "src"
    run(path, 30, keep_log=True)
    with EventLog.open(path / "log", readonly=True) as log:
        assert log.live_first_index == 1 and not log.segments()
    report = replay.fork(path, at=26, dest=tmp_path / "new")
    assert report.segments >= 1
    state = make_state()
    with replay.Journal.open(tmp_path / "new", state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    assert_same(state, reference(tmp_path, 26))


@pytest.mark.parametrize("at", [0, 31, 10**6])
def test_an_index_outside_the_history_is_refused_naming_it_and_the_range(source, tmp_path, at):
    with pytest.raises(replay.ForkIndexError, match=rf"fork at {at}: the source holds entries 1\.\.30, and a fork "
                                                    r"can be taken at 1\.\.30"):
        replay.fork(source, at=at, dest=tmp_path / "new")
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.forking").exists()


def test_wrong_arguments_are_refused_before_anything_is_made(source, tmp_path):
    before = tree_digest(source)
    with pytest.raises(TypeError, match="at must be an int"):
        replay.fork(source, at=True, dest=tmp_path / "new")
    with pytest.raises(TypeError, match="at must be an int"):
        replay.fork(source, at="3", dest=tmp_path / "new")
    with pytest.raises(TypeError, match="reason must be a str"):
        replay.fork(source, at=3, dest=tmp_path / "new", reason=None)
    with pytest.raises(replay.ForkError, match="not a journal directory"):
        replay.fork(tmp_path / "nothing", at=3, dest=tmp_path / "new")
    with pytest.raises(replay.ForkError, match="inside the source journal"):
        replay.fork(source, at=3, dest=source / "inner")
    with pytest.raises(replay.ForkError, match="inside the source journal"):
        replay.fork(source, at=3, dest=source)
    assert not (tmp_path / "new").exists() and tree_digest(source) == before


def test_an_existing_destination_is_never_overwritten(source, tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        replay.fork(source, at=3, dest=full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        replay.fork(source, at=3, dest=tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError, match="not a directory"):
        replay.fork(source, at=3, dest=tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(replay.ForkError, match="is the current directory"):
        replay.fork(source, at=3, dest=".")
    monkeypatch.chdir(tmp_path)
    replay.fork(source, at=3, dest="empty/")  # an empty directory is taken, as restore takes one
    assert (empty / "log" / "data.mdb").is_file() and not (tmp_path / ".empty.forking").exists()


def test_multi_rank_journals_are_refused(source, tmp_path):
    rank = tmp_path / "group" / "rank-0"
    import shutil

    shutil.copytree(source, rank)
    (rank / "rank.json").write_text('{"format": 1, "rank": 0, "world_size": 2}')
    with pytest.raises(replay.ForkError, match="one rank's directory of a multi-rank journal.*not supported"):
        replay.fork(rank, at=3, dest=tmp_path / "new")
    with pytest.raises(replay.ForkError, match="is a multi-rank journal.*not supported"):
        replay.fork(tmp_path / "group", at=3, dest=tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_an_interrupted_forks_staging_directory_is_replaced(source, tmp_path):
    staging = tmp_path / ".new.forking"
    (staging / "log").mkdir(parents=True)
    (staging / "log" / "junk").write_text("left by a killed fork")
    replay.fork(source, at=21, dest=tmp_path / "new")
    assert not staging.exists()
    assert not (tmp_path / "new" / "log" / "junk").exists()


def test_forking_beside_a_live_writer(source, tmp_path, reference):
    """Readers work beside a live writer, and so does fork: it copies what was committed
    when it started; the writer goes on undisturbed."""
    go = tmp_path / "go"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.replay.test_fork import _live_writer; "
         "_live_writer(*sys.argv[1:])", str(source), str(go)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "31"  # opened, applied entry 31, holds the lock
        assert eventlog.writer_pid(source / "log") == str(writer.pid)
        report = replay.fork(source, at=31, dest=tmp_path / "new")
        assert report.source_last_index == 31
    finally:
        go.write_text("")
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    state = make_state()
    with replay.Journal.open(tmp_path / "new", state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.index == 32
    assert_same(state, reference(tmp_path, 31))
    with EventLog.open(source / "log", readonly=True) as log:
        assert log.last_index == 35  # the writer went on


def test_an_entry_rewritten_under_the_fork_is_refused(source, tmp_path, monkeypatch):
    """A live writer that truncates entry I and writes another while the fork copies (as a
    rolled-back apply does): the fork would hold a history the source no longer has."""
    from replay import forking

    carry = forking._Fork._carry_files
    rewrite = ("import sys; from eventlog import EventLog\n"
               "with EventLog.open(sys.argv[1], durability='sync') as log:\n"
               "    log.truncate_after(26); log.append('add', {'v': 1, 'p': {'row': 0, 'value': -1.0}})")

    def rewrite_then_carry(self):  # another process: this one holds the log open readonly
        subprocess.run([sys.executable, "-c", rewrite, str(source / "log")], cwd=ROOT, check=True, timeout=120)
        carry(self)

    monkeypatch.setattr(forking._Fork, "_carry_files", rewrite_then_carry)
    with pytest.raises(replay.ForkError, match="entry 27 was rewritten while forking"):
        replay.fork(source, at=27, dest=tmp_path / "new")
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.forking").exists()


def _live_writer(path: str, go: str) -> None:
    """Open the journal, apply one entry and say its index, wait for `go`, apply 4 more."""
    import time

    with replay.Journal.open(path, state=make_state(), ops=make_ops(), durability="sync",
                             snapshot=replay.Every(entries=8), async_snapshots=False, snapshot_on_close=False) as j:
        step(j, 30)
        print(j.index, flush=True)
        while not os.path.exists(go):
            time.sleep(0.01)
        for i in range(31, 35):
            step(j, i)


def _infos(root: Path):
    import snapshots

    with snapshots.SnapshotStore(root / "snapshots") as store:
        return store.list()


def _damage_a_chunk_of(root: Path, info) -> None:
    """Flip a byte in a chunk only snapshot `info` uses (its manifest stays intact)."""
    from replay.replica.snapfiles import LocalStore

    local = LocalStore(root / "snapshots")
    others = {ref.id for name in local.manifest_names() if name != info.manifest_id
              for ref in local.read_manifest(name).manifest.chunks}
    own = [ref.id for ref in local.read_manifest(info.manifest_id).manifest.chunks if ref.id not in others]
    assert own, "the snapshot shares every chunk"
    where = region(root / "snapshots", own[0])  # its loose file, or its range in a pack
    where.flip(where.size - 1, 0x01)
