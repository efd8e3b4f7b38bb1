"""Matrix rows 4, 8 and 9 for the bare log: map growth under a live reader, readers
SIGKILLed inside read transactions, and hostile log entries.

Row 4's RLIMIT_FSIZE half and row 8's zombie writer live in test_limits.py.
"""

import os
import resource
import signal
import subprocess
import sys
import textwrap

import lmdb
import msgpack
import pytest

from eventlog import CorruptEntryError, EventLog
from eventlog.codec import TENSOR_EXT
from eventlog.record import frame, key

pytestmark = pytest.mark.crash


def _reader_child(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- row 4: LMDB map growth from a tiny map under load, a live reader must survive ---------


@pytest.mark.fault_diskfull
@pytest.mark.parametrize("mode", ["sync", "group"])
def test_map_growth_under_load_with_a_live_reader(tmp_path, mode):
    path = tmp_path / "log"
    acknowledged = []
    with EventLog.open(path, durability=mode, map_size=32 * 1024) as log:
        log.append("start", {"i": 0})
        log.flush()
        reader = _reader_child("""
            import sys, time
            from eventlog import EventLog
            log = EventLog.open(sys.argv[1], readonly=True)
            print("ready", flush=True)
            best, deadline = 0, time.monotonic() + 120
            while best < 300 and time.monotonic() < deadline:
                entries = list(log.entries())
                assert [e.payload["i"] for e in entries] == list(range(len(entries))), "not a prefix"
                best = max(best, len(entries))
            print(best, log.verify().ok, flush=True)
        """, path)
        assert reader.stdout.readline().strip() == "ready"
        blob = os.urandom(30_000)
        for i in range(1, 300):  # ~9 MB through a 32 KiB initial map: ~9 doublings
            index = log.append("grow", {"i": i, "blob": blob})
            if i % 10 == 0:
                log.wait_durable(index)
                acknowledged.append(index)
        log.flush()
        out, err = reader.communicate(timeout=180)
        grown_to = log._storage.env.info()["map_size"]
    assert reader.returncode == 0, err
    assert out.split() == ["300", "True"], out
    assert grown_to >= 8 * 2**20
    with EventLog.open(path, readonly=True) as log:
        present = {e.index: e.payload["i"] for e in log.entries()}
    assert all(present[i] == i - 1 for i in acknowledged)


# --- row 8: readers SIGKILLed inside read transactions --------------------------------------


def _cycle(log, blob, rounds):
    """Append and compact `rounds` times; return data.mdb's size after each round."""
    sizes = []
    for _ in range(rounds):
        log.append_many([("fill", blob)] * 20)
        log.compact_through(log.last_index)
        sizes.append(os.path.getsize(log.path / "data.mdb"))
    return sizes


@pytest.mark.fault_stale_reader
@pytest.mark.parametrize("kills", [1, 3])
def test_file_stops_growing_after_stale_readers_are_cleared(tmp_path, kills):
    path = tmp_path / "log"
    blob = os.urandom(8_000)
    with EventLog.open(path) as log:
        _cycle(log, blob, 10)  # steady state: freed pages are reused
        readers = [_reader_child("""
            import sys, time, lmdb
            env = lmdb.open(sys.argv[1], readonly=True, max_dbs=2)
            txn = env.begin()  # pins the current pages until the slot is cleared
            print("pinned", flush=True)
            time.sleep(120)
        """, path) for _ in range(kills)]
        for reader in readers:
            assert reader.stdout.readline().strip() == "pinned"
        pinned = _cycle(log, blob, 6)
        # While a live reader pins old pages they cannot be reused: the file must grow.
        # (This is what makes the rest of the test able to fail.)
        assert pinned[-1] > pinned[0]
        for reader in readers:
            os.kill(reader.pid, signal.SIGKILL)
            reader.wait()
        after = _cycle(log, blob, 20)
    # compact_through ran reader_check: the dead readers' slots are gone, pages are
    # reused again, and the file stops growing.
    assert after[-1] == after[5], after


# --- row 9: hostile log entries -------------------------------------------------------------


def _forge(path, payloads):
    """Append raw payload bytes as entries with a valid checksum chain, bypassing the encoder."""
    with EventLog.open(path) as log:
        log.append("honest", {"i": 1})
        term, first = log.term, log.last_index + 1
        prev = log.entry(log.last_index).checksum
    env = lmdb.open(str(path), max_dbs=2)
    db = env.open_db(b"entries")
    with env.begin(write=True, db=db) as txn:
        for offset, payload in enumerate(payloads):
            value, prev = frame(first + offset, term, b"hostile", payload, 0, prev)
            txn.put(key(first + offset), value)
    env.close()
    return first


HOSTILE = {
    "huge tensor shape": msgpack.packb(msgpack.ExtType(
        TENSOR_EXT, bytes((1, 1, 2)) + (2**40).to_bytes(8, "big") * 2 + b"\0" * 16)),
    "unknown ext type": msgpack.packb(msgpack.ExtType(77, b"\x00" * 8)),
    "absurd array length": b"\xdd\xff\xff\xff\xff" + b"\x01" * 16,
    "absurd bin length": b"\xc6\xff\xff\xff\xf0" + b"\x00" * 16,
    "deep nesting": b"\x91" * 200_000 + b"\x00",
    "truncated map": b"\x82\xa1a\x01",
}


@pytest.mark.fault_hostile
def test_hostile_payloads_are_named_errors_in_bounded_memory(tmp_path):
    path = tmp_path / "log"
    first = _forge(path, list(HOSTILE.values()))
    # Decode in a child whose address space is capped: an attempt to allocate what a
    # hostile length declares (terabytes) would die there instead of erroring cleanly.
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        from eventlog import EventLog, CorruptEntryError
        with EventLog.open(sys.argv[1], readonly=True) as log:
            for index in range(int(sys.argv[2]), log.last_index + 1):
                try:
                    log.entry(index)
                    print(index, "DECODED")
                except CorruptEntryError as exc:
                    print(index, "CorruptEntryError", exc.index)
            print("verify", log.verify().ok)
    """), str(path), str(first)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    for offset, name in enumerate(HOSTILE):
        assert lines[offset] == f"{first + offset} CorruptEntryError {first + offset}", (name, lines[offset])
    assert lines[-1] == "verify True"  # checksums are intact: the damage is in what was written


@pytest.mark.fault_hostile
@pytest.mark.parametrize("declared", [2**32 - 1, 0, 31])
def test_header_lengths_that_lie_are_framing_errors(tmp_path, declared):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append("a", {"x": 1})
        log.append("b", {"x": 2})
    env = lmdb.open(str(path), max_dbs=2)
    db = env.open_db(b"entries")
    with env.begin(write=True, db=db) as txn:
        value = bytearray(txn.get(key(2)))
        value[4:8] = declared.to_bytes(4, "big")  # payload_len
        txn.put(key(2), bytes(value))
    env.close()
    with EventLog.open(path, readonly=True) as log:
        with pytest.raises(CorruptEntryError, match="declares") as raised:
            log.entry(2)
        assert raised.value.index == 2
        assert [d.index for d in log.verify().damage] == [2]
        with pytest.raises(CorruptEntryError):
            list(log.headers(verify=False))
