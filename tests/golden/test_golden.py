"""Golden fixtures: what earlier code wrote, today's public API still opens, to the byte.

Each fixture under data/ is a tarball written by tests/golden/make_fixtures.py (with the
ops and state of tests/golden/recipe.py) before the architecture refactor of issue 20.
A test unpacks one into tmp and opens it with the public API only: Journal.open,
EventLog.open(readonly=True), SnapshotStore.load, a restore from a file:// replica
(Journal.open(replica=)), the multi-rank audit (`replay verify`, `replay stats`) and the
2-rank directory opened by two processes over gloo (tests/golden/rankopen.py). The
expected values below are literal (indexes, terms, tensor bytes), not recomputed from
the code under test: a change to an on-disk format or to recovery fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch

import eventlog
import replay
import snapshots

from tests.golden import recipe

pytestmark = pytest.mark.timeout(120)

DATA = Path(__file__).parent / "data"


def unpack(name: str, tmp_path: Path) -> Path:
    with tarfile.open(DATA / f"{name}.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / name


def open_journal(path: Path, **extra) -> replay.Journal:
    """The options the fixtures were written with (make_fixtures.journal_options)."""
    return replay.Journal.open(path, state=recipe.make_state(), ops=recipe.ops, snapshot=replay.Every(entries=6),
                               keep_last=2, durability="sync", async_snapshots=False, environment="ignore",
                               **extra)


def state_bytes(state: dict) -> tuple[str, str, dict]:
    """(w's float32 bytes, h's bf16 bytes, counters) in hex: the exact state."""
    return (state["w"].numpy().tobytes().hex(), state["h"].view(torch.int16).numpy().tobytes().hex(),
            dict(state["counters"]))


def assert_reference(state: dict, n: int, rank: int = 0) -> None:
    ref = recipe.reference(n, rank)
    assert torch.equal(state["w"], ref["w"]) and torch.equal(state["h"], ref["h"])
    assert state["w"].dtype == torch.float32 and state["h"].dtype == torch.bfloat16


# ---------------------------------------------------------------- a single-process journal

JOURNAL_STATE = ("d989af42d989af42d989af42d989af42", "84bf94be9c40", {"steps": 30})


def test_journal_log_reads_across_archive_and_lmdb(tmp_path):
    root = unpack("journal", tmp_path)
    with eventlog.EventLog.open(root / "log", readonly=True) as log:
        assert (log.term, log.first_index, log.last_index) == (2, 1, 30)
        entries = list(log.entries())
    assert [e.index for e in entries] == list(range(1, 31))
    assert [e.term for e in entries] == [1] * 20 + [2] * 10
    assert [e.op for e in entries] == [recipe.payload(i)[0] for i in range(1, 31)]
    assert sorted(p.name for p in (root / "log" / "archive").iterdir()) == [
        "00000000000000000001-00000000000000000006.seg", "00000000000000000007-00000000000000000012.seg",
        "00000000000000000013-00000000000000000018.seg", "00000000000000000019-00000000000000000020.seg",
        "00000000000000000021-00000000000000000026.seg"]


def test_journal_opens_and_recovers_the_same_bytes(tmp_path):
    root = unpack("journal", tmp_path)
    with open_journal(root) as journal:
        assert journal.index == 30 and journal.count() == 30
        assert journal.log.term == 3  # the fixture was written in terms 1 and 2
        assert journal.recovery.snapshot_index == 26 and journal.recovery.replayed == range(27, 31)
        assert state_bytes(journal.state) == JOURNAL_STATE
        assert_reference(journal.state, 30)
        op, kwargs = recipe.payload(31)
        journal.apply(op, **kwargs)
        assert journal.index == 31
    with open_journal(root) as journal:
        assert journal.index == 31
        assert_reference(journal.state, 31)


def test_journal_verifies_and_rebuilds_any_index(tmp_path):
    root = unpack("journal", tmp_path)
    report = replay.verify_journal(root)
    assert report.ok
    with snapshots.SnapshotStore(root / "snapshots") as store:
        assert [(i.index, i.term) for i in store.list()] == [(0, 0), (20, 1), (26, 2)]
    state = recipe.make_state()
    replay.state_at(root, recipe.ops, state, 13)  # from snapshot 0, through the archive
    assert_reference(state, 13)


# ---------------------------------------------------------------- a bare eventlog

def test_eventlog_opens_readonly_with_exact_entries(tmp_path):
    root = unpack("eventlog", tmp_path)
    with eventlog.EventLog.open(root, readonly=True) as log:
        assert (log.term, log.first_index, log.last_index) == (2, 1, 10)
        entries = list(log.entries())
    assert [(e.index, e.term, e.op) for e in entries] == (
        [(i, 1, "put") for i in range(1, 9)] + [(9, 2, "tensor"), (10, 2, "tensor")])
    for e in entries[:8]:
        assert e.payload == {"i": e.index, "name": f"entry-{e.index}", "blob": bytes([e.index]) * e.index}
    t9, t10 = entries[8].payload["t"], entries[9].payload["t"]
    assert t9.dtype == torch.float32 and t9.shape == (2, 3) and torch.equal(t9, torch.arange(6.0).reshape(2, 3))
    assert t10.dtype == torch.bfloat16 and t10.view(torch.int16).tolist() == [16320, -16368]
    with eventlog.EventLog.open(root, durability="sync") as log:  # a writer takes the next term
        assert log.term == 3
        assert log.append("put", {"i": 11}) == 11


# ---------------------------------------------------------------- a snapshot store

STORE_SHA256 = {  # sha256 of each tensor's bytes in the snapshot at 9
    ("model", "w"): "8f79f374121aede56b1330ec47b116125d5afaa0a86f661ca3bee3b5e1e7c878",
    ("model", "b"): "281b02b10f5f4997e5bf8c93343e6f2aa8bc81ffad6d6813c593181ebceda12a",
    ("model", "h"): "b005b52ed7e3eb08953294ce8a2f316c984c0b1f052f68bdc6f3bd786a72de10",
    ("opt", 0): "80b8fd6d60fa85fd14a38b5295cb92abd80dfec5ca406c9f969609a79d36809d",
}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def test_store_loads_both_snapshots(tmp_path):
    root = unpack("store", tmp_path)
    with snapshots.SnapshotStore(root) as store:
        infos = store.list()
        assert [(i.manifest_id, i.index, i.term, i.meta, i.tensors, i.chunks) for i in infos] == [
            ("3-1", 3, 1, {"golden": 3}, 4, 4), ("9-2", 9, 2, {"golden": 9}, 4, 4)]
        assert [(i.bytes_logical, i.bytes_written, i.bytes_stored) for i in infos] == [(336, 875, 875), (336, 773, 877)]
        newest, damaged = store.latest_verified()
        assert newest.manifest_id == "9-2" and damaged == []
        first, second = store.load(infos[0]), store.load("9-2")
    assert first["step"] == 3 and second["step"] == 9
    assert first["opt"][1] == (1.5, "x")
    assert torch.equal(second["opt"][0], torch.ones(2)) and torch.equal(first["opt"][0], torch.zeros(2))
    assert torch.equal(first["model"]["b"], torch.arange(5)) and first["model"]["h"].dtype == torch.bfloat16
    assert torch.equal(second["model"]["w"][:4], torch.zeros(4))
    assert torch.equal(second["model"]["w"][4:], first["model"]["w"][4:])
    assert torch.equal(second["model"]["h"], first["model"]["h"])
    got = {("model", k): _sha(v) for k, v in second["model"].items()}
    got[("opt", 0)] = _sha(second["opt"][0])
    assert got == STORE_SHA256


def test_mixed_store_loads_loose_and_packed_chunks(tmp_path):
    """The store fixture's two snapshots, the first with loose chunk files, the second
    with its new chunks in a pack (FORMAT.md, "Pack file"): the same values load."""
    root = unpack("mixed_store", tmp_path)
    assert os.listdir(root / "packs") and os.listdir(root / "chunks")
    with snapshots.SnapshotStore(root) as store:
        infos = store.list()
        assert [(i.manifest_id, i.meta, i.tensors, i.chunks) for i in infos] == [
            ("3-1", {"golden": 3}, 4, 4), ("9-2", {"golden": 9}, 4, 4)]
        assert all(store.verify(i).ok for i in infos)
        second = store.load("9-2")
        first = store.load("3-1")
    assert torch.equal(second["model"]["w"][4:], first["model"]["w"][4:])
    got = {("model", k): _sha(v) for k, v in second["model"].items()}
    got[("opt", 0)] = _sha(second["opt"][0])
    assert got == STORE_SHA256


# ---------------------------------------------------------------- a file:// replica

def test_replica_restores_into_an_empty_directory(tmp_path):
    replica = unpack("replica", tmp_path)
    head = json.loads((replica / "head.json").read_text())
    assert head["index"] == 12
    with open_journal(tmp_path / "restored", replica=replica.as_uri()) as journal:
        assert journal.index == 12
        assert_reference(journal.state, 12)
        assert state_bytes(journal.state) == REPLICA_STATE
        op, kwargs = recipe.payload(13)
        journal.apply(op, **kwargs)
        journal.flush()
    assert json.loads((replica / "head.json").read_text())["index"] == 13  # it ships to the old replica


REPLICA_STATE = ("3bb1f3413bb1f3413bb1f3413bb1f341", "c5bf1ac02c40", {"steps": 12})


# ---------------------------------------------------------------- a 2-rank journal directory

RANK_STATES = {0: ("3bb1f3413bb1f3413bb1f3413bb1f341", "c5bf1ac02c40", {"steps": 12}),
               1: ("153bf941153bf941153bf941153bf941", "f4beeabf1e40", {"steps": 12})}


def _cli(capsys, *args) -> tuple[int, str]:
    from replay.__main__ import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().out


def test_ranks_audit_reads_the_group(tmp_path, capsys):
    root = unpack("ranks", tmp_path)
    status, out = _cli(capsys, "verify", root)
    assert status == 0, out
    assert "ranks: world size 2; directories rank-0, rank-1; every rank.json agrees" in out
    assert "cut: 12 " in out and "acknowledged: 12 " in out
    assert "global records: 0, 6, 12;" in out and "verdict: sound" in out
    status, out = _cli(capsys, "stats", root, "--json")
    assert status == 0, out
    sections = [json.loads(line) for line in out.splitlines()]
    group = next(s for s in sections if s["section"] == "group")
    assert {k: group[k] for k in ("world_size", "ranks", "cut", "acknowledged", "common_snapshot",
                                  "common_manifests", "global_records", "problems")} == {
        "world_size": 2, "ranks": [0, 1], "cut": 12, "acknowledged": 12, "common_snapshot": 12,
        "common_manifests": ["12-1", "12-1"], "global_records": [0, 6, 12], "problems": 0}
    ranks = sorted((s for s in sections if s["section"] == "rank"), key=lambda s: s["rank"])
    assert [(s["rank"], s["world_size"], s["first_index"], s["last_index"], s["snapshots"]) for s in ranks] == [
        (0, 2, 1, 12, [0, 6, 12]), (1, 2, 1, 12, [0, 6, 12])]


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_directory_rebuilds_its_state(tmp_path, rank):
    root = unpack("ranks", tmp_path)
    state = recipe.make_state()
    replay.state_at(root / f"rank-{rank}", recipe.ops, state, 12)
    assert state_bytes(state) == RANK_STATES[rank]
    assert_reference(state, 12, rank)
    assert json.loads((root / f"rank-{rank}" / "rank.json").read_text()) == {"format": 1, "rank": rank, "world_size": 2}


def test_the_group_opens_at_world_size_2(tmp_path):
    """Two processes over gloo open the fixture as a multi-rank journal and recover it."""
    import os
    import socket
    import subprocess
    import sys

    root = unpack("ranks", tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.golden.rankopen", str(root), str(r), str(port),
                               str(tmp_path / f"rank-{r}.json")], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outputs = [p.communicate(timeout=100)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for r in range(2):
        found = json.loads((tmp_path / f"rank-{r}.json").read_text())
        assert found["index"] == 12 and found["after"] == 13
        assert (found["w"], found["h"], found["counters"]) == RANK_STATES[r]
