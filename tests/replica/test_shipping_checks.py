"""What a shipper checks before a segment counts (replay/replica/FORMAT.md, "Order of
uploads", the table of what is caught where), now that archive files are read and checked
on worker threads ahead of their uploads (prepared.py) and may be uploaded before they
count: an archive file damaged on disk, or holding an entry damaged before it was sealed
(under a valid file checksum), is never counted, and the head stays before it."""

from __future__ import annotations

import threading

import pytest

from eventlog import SegmentDamage, segment
from replay.replica.errors import ObjectNotFoundError
from replay.replica.head import HEAD_KEY, parse_head
from replay.replica.objects import FileObjectStore
from replay.replica.prepared import Prepared
from replay.replica.restore import restore
from replay.replica.sources import Verified, plan

from .test_pipelined_uploads import _start, sealed_through_10
from .test_shipping import apply_n, assert_state, open_journal, restored_state

pytestmark = pytest.mark.timeout(120)


def _journal_with_archive(tmp_path):
    """An open journal whose archive holds several files (1..5, 6..10, ...), a snapshot at 5
    kept, and live entries after the archive; the archive file names, oldest first."""
    a = open_journal(tmp_path / "a", every=1000)
    apply_n(a, 5)
    a.snapshot()
    a.close()
    a = open_journal(tmp_path / "a", every=1000)
    for _ in range(2):
        apply_n(a, 5)
        a.snapshot()
    apply_n(a, 5)
    a.flush()
    names = sealed_through_10(tmp_path / "a" / "log" / "archive")
    assert names[1].startswith("00000000000000000006-00000000000000000010"), names
    return a, names


def _flip_body_byte(path):
    data = bytearray(path.read_bytes())
    data[segment.HEADER_SIZE + len(data[segment.HEADER_SIZE:]) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _damage_entry_and_reseal(path, index):
    """Entry `index` of the segment file at `path` gets a flipped payload byte, and the file is
    sealed again around it: a valid file checksum over a body whose entry chain is broken
    (what sealing an entry already damaged in LMDB would leave)."""
    old = segment.decode(path.read_bytes())
    values = [bytes(v) for v in old.values]
    damaged = bytearray(values[index - old.first])
    damaged[-1] ^= 0x01
    values[index - old.first] = bytes(damaged)
    path.write_bytes(segment.encode(old.first, values, old.prev_term, old.prev_checksum))


def _ship_once_and_read_head(journal, replica):
    """Start a shipper and close it at once: its rounds (the last one runs within `close`)
    have ended when this returns; (store, head or None, the last round's error)."""
    store = FileObjectStore(replica)
    shipper = _start(journal, store)
    shipper.close(60)
    error = shipper.status().last_error
    with FileObjectStore(replica, readonly=True) as reader:
        try:
            head = parse_head(reader.get(HEAD_KEY, 1 << 16)[0])
        except ObjectNotFoundError:
            head = None
    return store, head, error


@pytest.mark.parametrize("damage", ["flipped_on_disk", "entry_damaged_before_sealing"])
def test_a_damaged_archive_file_is_never_counted(tmp_path, damage):
    a, names = _journal_with_archive(tmp_path)
    target = tmp_path / "a" / "log" / "archive" / names[1]
    if damage == "flipped_on_disk":
        _flip_body_byte(target)
    else:
        _damage_entry_and_reseal(target, 8)
    store, head, error = _ship_once_and_read_head(a, tmp_path / "replica")
    a.close()
    # The segment before it (1..5) is not known to be followed by anything: it does not
    # count either, so no head is written (a round that meets damage counts nothing more).
    assert head is None or head.index <= 5, "a head must never name a damaged segment, nor anything after it"
    assert error is not None and "6..10" in error, error
    if damage == "entry_damaged_before_sealing":
        assert "entry 8" in error, error
    with FileObjectStore(tmp_path / "replica", readonly=True) as reader:
        stored = [k for k in reader.list("segments/") if "00000000000000000006-" in k]
    assert stored == [], f"a damaged archive file was uploaded: {stored}"
    if head is not None:
        report = restore(store.url, tmp_path / "restored")
        state, restored = restored_state(tmp_path / "restored")
        assert_state(state, report.head_index)
        restored.close()


def test_prepared_yields_in_plan_order_and_raises_a_damaged_piece_at_its_turn(tmp_path):
    a, names = _journal_with_archive(tmp_path)
    try:
        pieces = plan(a.log, 1, a.log.last_index, 10)
        assert [p.path is not None for p in pieces[:2]] == [True, True] and pieces[-1].path is None
        _flip_body_byte(tmp_path / "a" / "log" / "archive" / names[1])
        got = []
        with pytest.raises(SegmentDamage, match="6..10"):
            with Prepared(a.log, Verified(), pieces) as prepared:
                for piece, data, bounds in prepared:
                    got.append((piece.first, piece.last, bounds[:2]))
        assert got == [(1, 5, (1, 5))], "the piece before the damaged one comes out first, checked"
        assert not [t for t in threading.enumerate() if t.name == "replay-replica-check"], \
            "a worker thread outlived the block"
    finally:
        a.close()
