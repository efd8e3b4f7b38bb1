"""`verify` (and `log`/`show` on damage): every damaged entry and chunk is named; readers write nothing."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import lmdb

from tests.chunkcopies import all_regions
from tests.cli.conftest import cli

DAMAGED_INDEX = 17


def flip_entry_byte(journal: Path, index: int) -> None:
    """Flip the last payload byte of a stored entry, with raw LMDB (as a disk error would)."""
    env = lmdb.open(str(journal / "log"), max_dbs=2)
    try:
        entries = env.open_db(b"entries", create=False)
        with env.begin(write=True, db=entries) as txn:
            key = struct.pack(">Q", index)
            value = bytearray(txn.get(key))
            value[-1] ^= 0x01
            txn.put(key, bytes(value))
    finally:
        env.close()


def corrupt_one_chunk(journal: Path) -> str:
    """Flip a byte in the middle of one chunk (loose, or its range in a pack); return its id."""
    chunk = min(all_regions(journal / "snapshots"), key=lambda r: r.cid)
    chunk.flip(chunk.size // 2)
    return chunk.cid


# lock.mdb is LMDB's reader table: every reader registers in it by design (that is how a
# writer knows which pages are still in use). READERS is the snapshot store's reader flock.
NOT_CONTENT = {"lock.mdb", "READERS"}


def digest_tree(path: Path) -> dict[str, str]:
    """sha256 of every content file under `path` (the log's data, lock file, manifests, chunks)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name not in NOT_CONTENT}


def test_verify_a_sound_journal_exits_0_and_changes_nothing(journal):
    before = digest_tree(journal)
    result = cli("verify", journal)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: sound" in result.stdout and "terms: 1 from 1, 2 from 26" in result.stdout
    assert "snapshot 30-2: ok" in result.stdout
    assert digest_tree(journal) == before  # readonly: no term bump, no writer lock, no snapshot file


def test_verify_names_the_damaged_entry_and_chunk_and_exits_1(journal):
    flip_entry_byte(journal, DAMAGED_INDEX)
    chunk = corrupt_one_chunk(journal)
    result = cli("verify", journal, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines()]
    damaged_entries = [r["index"] for r in found if r.get("check") == "entry"]
    assert damaged_entries == [DAMAGED_INDEX]  # the chain resumes after it: one altered entry, one report
    damaged_chunks = [p["chunk"] for r in found if r.get("check") == "snapshot" and not r["ok"] for p in r["problems"]]
    assert damaged_chunks == [chunk]
    assert found[-1] == {"check": "verdict", "ok": False, "problems": 2}

    text = cli("verify", journal)
    assert text.returncode == 1
    assert f"DAMAGED entry {DAMAGED_INDEX}: checksum mismatch" in text.stdout
    assert f"DAMAGED chunk {chunk}" in text.stdout


def test_log_and_show_report_a_damaged_entry_in_place(journal):
    flip_entry_byte(journal, DAMAGED_INDEX)
    listing = cli("log", journal, "--json")
    assert listing.returncode == 1
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [r["index"] for r in rows] == list(range(1, 36))  # the listing goes on past the damage
    assert [r["index"] for r in rows if "damaged" in r] == [DAMAGED_INDEX]
    shown = cli("show", journal, DAMAGED_INDEX)
    assert shown.returncode == 1
    assert "DAMAGED: checksum mismatch" in shown.stdout and "payload: not decoded" in shown.stdout
