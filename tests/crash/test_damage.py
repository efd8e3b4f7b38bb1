"""Rows 3, 5, 6: I/O errors through the Journal (strace), damaged snapshots, latent log corruption."""

from __future__ import annotations

import json
import os
import random
import shutil

import lmdb
import pytest

from eventlog import EventLog
from snapshots.manifest import Manifest
from tests.chunkcopies import Region, region

from .checker import (
    Tally, assert_error_names, check_journal, finish_child, journal_writer, popen_child, recovered_in_fresh_process,
    run_forked,
)

pytestmark = pytest.mark.crash


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """keep_last=3, snapshots every 4 entries, 5 entries after the newest snapshot."""
    root = str(tmp_path_factory.mktemp("damage") / "base")
    first = run_forked(journal_writer, root, steps=16, snapshot_every=4, keep_last=3)
    tail = run_forked(journal_writer, root, steps=5, snapshot_every=1000, keep_last=3)
    assert first.done and tail.done
    return root, first.acks + tail.acks


# ----------------------------------------------------------------- row 3: I/O errors


IO_FAULTS = [("fdatasync:error=EIO", "3"), ("fdatasync:error=EIO", "3+"),
             ("pwrite64:error=ENOSPC", "9"), ("pwrite64:error=ENOSPC", "4+")]


@pytest.mark.fault_ioerror
def test_io_errors_poison_the_journal_and_lose_nothing_acknowledged(strace, tmp_path, base):
    source, acks = base
    tally = Tally("3 EIO/ENOSPC fail-once and fail-always")
    children = []
    for n, (fault, when) in enumerate(IO_FAULTS):
        root = str(tmp_path / f"j{n}")
        shutil.copytree(source, root)
        args = ["journal", root, "12", json.dumps({"flush_every": 1, "snapshot_every": 1000})]
        children.append((fault, when, root, popen_child(args, strace, f"{fault}:when={when}")))
        if len(children) % 2 == 0 or n == len(IO_FAULTS) - 1:  # two at a time
            for fault, when, root, (proc, r) in children:
                run = finish_child(proc, r)
                tally.runs += 1
                # (d) the user sees the journal poisoned, naming the errno; no silent retry.
                assert_error_names(run, "Input/output error" if "EIO" in fault else "No space left on device")
                # Poisoned mid-run, or a LogError from open when the fault hits its term commit.
                assert run.errors[0][0] in ("JournalPoisonedError", "LogError"), run.errors
                check_journal(recovered_in_fresh_process(root), acks + run.acks, tally)
            children = []
    tally.report()


# ----------------------------------------------------------------- row 5: damaged snapshots


def _newest_manifest_and_own_chunks(root):
    """(newest manifest's path, the regions of the chunks only it uses: loose files, or
    ranges of the packs holding them)."""
    manifests = os.path.join(root, "snapshots", "manifests")
    names = sorted((n for n in os.listdir(manifests) if "-" in n and not n.startswith(".")),
                   key=lambda n: tuple(map(int, n.split("-"))))
    decoded = {n: Manifest.decode(n, open(os.path.join(manifests, n), "rb").read()) for n in names}
    older = {c.id for n in names[:-1] for c in decoded[n].chunks}
    own = [c.id for c in decoded[names[-1]].chunks if c.id not in older]
    return os.path.join(manifests, names[-1]), [region(os.path.join(root, "snapshots"), c) for c in own]


def _damages(manifest, chunks):
    """(what, region, how): damage to the manifest file, then to up to two chunks. A chunk's
    truncation cuts the file that holds it at that byte of the chunk (for a pack: the
    chunk, the rest and the index); zeroing and garbage stay inside the chunk's bytes."""
    rng = random.Random(5)
    size = os.path.getsize(manifest)
    whole = Region("", manifest, 0, size, None)
    for at in sorted({0, 1, 8, 16, 31, 32, 33, size // 2, size - 1}):
        yield f"manifest truncated at {at}", whole, ("truncate", at)
    yield "manifest sector zeroed", whole, ("zero", 0)
    yield "manifest garbage", whole, ("garbage", rng.randrange(1 << 30))
    for chunk in chunks[:2]:
        size = chunk.size
        for at in sorted({0, 7, 16, 24, size // 3, size - 1}):
            yield f"chunk truncated at {at}", chunk, ("truncate", at)
        yield "chunk sector zeroed", chunk, ("zero", 512 * (size // 1024))
        yield "chunk garbage", chunk, ("garbage", rng.randrange(1 << 30))


def _apply(path, where: Region, how):
    """Damage bytes [where.offset, where.offset + where.size) of the file at `path` (a copy
    of `where.path`)."""
    kind, arg = how
    lo, hi = where.offset, where.offset + where.size
    os.chmod(path, 0o644)
    data = bytearray(open(path, "rb").read())
    if kind == "truncate":
        data = data[:lo + arg]
    elif kind == "zero":
        end = min(lo + arg + 512, hi)
        data[lo + arg:end] = bytes(end - lo - arg)
    else:
        data[lo:hi] = random.Random(arg).randbytes(where.size)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.fault_snapshot_damage
def test_damaged_newest_snapshot_falls_back_to_the_previous_and_replays(tmp_path, base):
    source, acks = base
    manifest, chunks = _newest_manifest_and_own_chunks(source)
    assert chunks, "the newest snapshot shares every chunk: nothing to damage"
    newest_index = int(os.path.basename(manifest).split("-")[0])
    tally = Tally("5 torn/zeroed/garbage snapshot")
    for n, (what, where, how) in enumerate(_damages(manifest, chunks)):
        root = str(tmp_path / f"d{n}")
        shutil.copytree(source, root)
        _apply(os.path.join(root, os.path.relpath(where.path, source)), where, how)
        summary = recovered_in_fresh_process(root)
        tally.runs += 1
        check_journal(summary, acks, tally)
        assert summary["snapshot_index"] < newest_index, what
        assert summary["damaged_snapshots"] and summary["damaged_snapshots"][0][0].startswith(f"{newest_index}-"), what
    tally.report()
    assert tally.runs >= 25


# ----------------------------------------------------------------- row 6: latent log corruption


@pytest.mark.fault_log_corruption
def test_flipped_byte_in_a_committed_entry_stops_recovery_naming_it(tmp_path, base):
    source, acks = base
    root = str(tmp_path / "j")
    shutil.copytree(source, root)
    log_dir = os.path.join(root, "log")
    with EventLog.open(log_dir, readonly=True) as log:
        target = log.last_index - 2
    env = lmdb.open(log_dir, subdir=True, max_dbs=2, readonly=True, lock=False)
    with env.begin() as txn:
        value = bytes(txn.get(target.to_bytes(8, "big"), db=env.open_db(b"entries", txn=txn, create=False)))
    env.close()
    data = bytearray(open(os.path.join(log_dir, "data.mdb"), "rb").read())
    at, copies = data.find(value), 0
    while at >= 0:  # the live page and any stale copy-on-write copies of it
        data[at + len(value) - 2] ^= 0x10  # inside the payload, past the header
        at, copies = data.find(value, at + 1), copies + 1
    assert copies >= 1
    open(os.path.join(log_dir, "data.mdb"), "wb").write(data)

    run = run_forked(journal_writer, root, steps=1)
    assert run.recovered is None
    assert_error_names(run, "CorruptEntryError")
    assert run.errors[0][0] == "CorruptEntryError" and str(target) in run.errors[0][1], run.errors
    with EventLog.open(log_dir, readonly=True) as log:
        report = log.verify()
        assert not report.ok and report.damage[0].index == target, str(report)
        assert log.last_index == target + 2  # the reopen appended nothing after the damage
    print(f"\nMATRIX 6 latent log corruption: runs=1 acked={len(acks)} lost=0 diverged=0 (recovery refused at {target})")
