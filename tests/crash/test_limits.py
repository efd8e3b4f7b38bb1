"""Rows 4, 8, 9 (first cut): EFBIG under RLIMIT_FSIZE, zombie-writer fencing, hostile manifests."""

from __future__ import annotations

import os
import resource
import signal

import msgpack
import pytest
import xxhash

from eventlog import EventLog
from snapshots.manifest import Manifest, ManifestDecodeError

from .checker import Tally, check_journal, journal_writer, recovered_in_fresh_process, run_forked, send

pytestmark = pytest.mark.crash


def _limited_writer(root, out_fd):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    size = os.path.getsize(os.path.join(root, "log", "data.mdb"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192,) * 2)  # the log may grow by two pages
    journal_writer(root, out_fd, steps=None, flush_every=1, snapshot_every=10_000, keep_log=True)


@pytest.mark.fault_diskfull
def test_file_size_limit_fails_loudly_and_loses_nothing_acknowledged(tmp_path):
    root = str(tmp_path / "j")
    base = run_forked(journal_writer, root, steps=5)
    run = run_forked(_limited_writer, root, timeout=20)
    assert run.errors, run.stderr_tail()
    text = " ".join(" ".join(e) for e in run.errors)
    assert "File too large" in text or "MapFull" in text or "EFBIG" in text, text[:500]
    tally = Tally("4 RLIMIT_FSIZE (EFBIG)")
    tally.runs = 1
    check_journal(recovered_in_fresh_process(root), base.acks + run.acks, tally)
    tally.report()


def _zombie(path, out_fd):
    log = EventLog.open(path)
    send(out_fd, ("ack", log.term, log.append("step", {"i": 1})))
    os.read(int(os.environ["GO_FD"]), 1)  # wait until the takeover committed
    try:
        log.append("step", {"i": 2})
        send(out_fd, ("wrote",))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        send(out_fd, ("error", type(exc).__name__, str(exc), ""))


@pytest.mark.fault_stale_reader
def test_zombie_writer_is_fenced_after_a_takeover(tmp_path):
    path = str(tmp_path / "log")
    r, w = os.pipe()
    os.set_inheritable(r, True)
    import threading

    def take_over():
        import time
        while not os.path.exists(os.path.join(path, "data.mdb")):
            time.sleep(0.01)
        time.sleep(0.3)
        taker = run_forked(lambda p, fd: EventLog.open(p, takeover=True).close(), path)
        assert taker.status == 0, taker.stderr_tail()
        os.write(w, b"x")

    t = threading.Thread(target=take_over)
    t.start()
    run = run_forked(_zombie, path, env={"GO_FD": str(r)})
    t.join()
    assert run.errors and run.errors[0][0] == "FencedError", (run.messages, run.stderr_tail())
    with EventLog.open(path, readonly=True) as log:
        assert log.last_index == 1 and log.verify().ok  # the zombie wrote nothing


def _manifest_bytes(body):
    raw = msgpack.packb(body, use_bin_type=True)
    return b"SNPMANIF" + (1).to_bytes(4, "little") + bytes(4) + xxhash.xxh3_128_digest(raw) + raw


@pytest.mark.fault_hostile
@pytest.mark.parametrize("case", ["path separator", "absurd length", "deep nesting", "huge shape"])
def test_hostile_manifest_is_a_clear_error(case):
    body = {"format": 1, "index": 1, "term": 1, "created": 0.0, "meta": None, "tree": ["x", 0],
            "tensors": [["float32", [4], [[0, 0, 16]]]], "chunks": [["0" * 32, 16, 40]],
            "bytes": {"logical": 16, "written": 0, "stored": 0}}
    if case == "path separator":
        body["chunks"][0][0] = "../../../../etc/passwd" + "0" * 10
    elif case == "absurd length":
        body["chunks"][0][1] = 1 << 60
    elif case == "deep nesting":
        body["tree"] = "TREE-PLACEHOLDER"
    else:
        body["tensors"][0][1] = [1 << 40, 1 << 40]
    data = _manifest_bytes(body)
    if case == "deep nesting":
        # msgpack refuses to *encode* 100,000 levels, so build them by hand: each level is
        # ["l", [node]] = fixarray(2), fixstr "l", fixarray(1); then the leaf ["x", 0].
        raw = msgpack.packb(body, use_bin_type=True).replace(
            msgpack.packb("TREE-PLACEHOLDER"), b"\x92\xa1l\x91" * 100_000 + msgpack.packb(["x", 0]))
        data = b"SNPMANIF" + (1).to_bytes(4, "little") + bytes(4) + xxhash.xxh3_128_digest(raw) + raw
    with pytest.raises(ManifestDecodeError):
        Manifest.decode("1-1", data)
