"""`replay log/stats/verify DIR` on multi-rank journal directories (replay/ranks/layout.py).

The directories are built without a process group (tests/cli/ranksjob.py): each rank is
an ordinary journal with the same ops and its own payloads, plus the rank records and
rank 0's global records a group writes. Damage is then made by hand: a missing rank, a
rank.json that lies or is hostile, a rank whose ops differ, a global record naming a
missing manifest, a damaged newest snapshot on one rank. Each must be named (rank, path,
index) with exit status 1, never a traceback; a sound directory exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from replay.ranks import layout
from snapshots.manifest import Manifest

from tests.chunkcopies import region
from tests.cli import ranksjob

pytestmark = pytest.mark.timeout(120)

STEPS = 25  # snapshots every 10: at 0, 10 and 20 on every rank


@pytest.fixture(scope="session")
def two_ranks_master(tmp_path_factory) -> Path:
    """2 ranks of 25 entries each; rank 1 then wrote 3 more (entries 26..28, above the cut)."""
    return ranksjob.write_group(tmp_path_factory.mktemp("two") / "run", 2, STEPS, longer={1: 3})


@pytest.fixture(scope="session")
def three_ranks_master(tmp_path_factory) -> Path:
    return ranksjob.write_group(tmp_path_factory.mktemp("three") / "run", 3, STEPS)


@pytest.fixture
def two_ranks(two_ranks_master, tmp_path) -> Path:
    return Path(shutil.copytree(two_ranks_master, tmp_path / "run"))


@pytest.fixture
def three_ranks(three_ranks_master, tmp_path) -> Path:
    return Path(shutil.copytree(three_ranks_master, tmp_path / "run"))


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def section(found: list[dict], name: str) -> list[dict]:
    return [r for r in found if r.get("section") == name]


def clean(err: str) -> bool:
    return "Traceback" not in err and "internal error" not in err


# -- sound directories ------------------------------------------------------------------

def test_two_ranks_sound_with_one_rank_above_the_cut(cli_here, two_ranks):
    status, out, err = cli_here("verify", two_ranks)
    assert status == 0, out + err
    assert "verdict: sound" in out
    assert "ops: identical on every rank at indexes 1..25" in out
    assert "rank 1 holds 3 (26..28)" in out
    assert "common snapshot: index 20 (rank 0 20-1, rank 1 20-1)" in out
    assert sum(line.startswith("rank 0: snapshot ") for line in out.splitlines()) == 3
    assert sum(line.startswith("rank 1: snapshot ") for line in out.splitlines()) == 3

    status, out, err = cli_here("verify", two_ranks, "--json")
    found = records(out)
    assert status == 0 and found[-1] == {"check": "verdict", "ok": True, "problems": 0}
    assert {r["rank"] for r in found if "rank" in r} == {0, 1}
    assert [r for r in found if r["check"] == "common_snapshot"][0]["index"] == 20

    status, out, err = cli_here("stats", two_ranks, "--json")
    found = records(out)
    assert status == 0, err
    ranks = section(found, "rank")
    assert [(r["rank"], r["first_index"], r["last_index"], r["entries"], r["above_cut"]) for r in ranks] == \
        [(0, 1, 25, 25, 0), (1, 1, 28, 28, 3)]
    assert [t["first_index"] for t in ranks[1]["terms"]] == [1, 26]  # the extra entries came from a second term
    assert ranks[0]["snapshots"] == ranks[1]["snapshots"] == [0, 10, 20]
    (group,) = section(found, "group")
    assert (group["world_size"], group["cut"], group["common_snapshot"], group["global_records"]) == \
        (2, 25, 20, [0, 10, 20])
    assert group["common_manifests"] == ["20-1", "20-1"] and group["above_cut"] == {"0": 0, "1": 3}
    assert [r["manifests"] for r in section(found, "global_record")] == [["0-0", "0-0"], ["10-1", "10-1"],
                                                                         ["20-1", "20-1"]]


def test_two_ranks_stats_text(cli_here, two_ranks):
    status, out, err = cli_here("stats", two_ranks)
    assert status == 0, err
    assert "world size 2; directories rank-0, rank-1" in out
    assert "cut: 25 " in out and "common snapshot: index 20" in out
    assert "global records (rank 0's group/snapshots/)" in out


def test_two_ranks_log_merges_ranks_and_marks_entries_above_the_cut(cli_here, two_ranks):
    status, out, err = cli_here("log", two_ranks, "--json")
    assert status == 0, err
    rows = records(out)
    assert len(rows) == 25 + 28
    assert [(r["index"], r["rank"]) for r in rows[:4]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [(r["index"], r["rank"]) for r in rows if r.get("above_cut")] == [(26, 1), (27, 1), (28, 1)]
    by_index: dict[int, set] = {}
    for r in rows:
        by_index.setdefault(r["index"], set()).add(r["op"])
    assert all(len(ops) == 1 for ops in by_index.values())  # SPMD: one op per index

    status, out, err = cli_here("log", two_ranks, "--from", 25)
    lines = out.splitlines()
    assert status == 0 and "cut 25" in lines[0]
    assert len(lines) == 1 + 5 and sum("[above the cut]" in line for line in lines) == 3

    status, out, err = cli_here("log", two_ranks, "--rank", 1, "--json")
    rows = records(out)
    assert status == 0 and len(rows) == 28 and all("rank" not in r for r in rows)


def test_three_ranks_sound(cli_here, three_ranks):
    status, out, err = cli_here("verify", three_ranks)
    assert status == 0, out + err
    assert "directories rank-0, rank-1, rank-2; every rank.json agrees" in out
    assert "common snapshot: index 20 (rank 0 20-1, rank 1 20-1, rank 2 20-1)" in out
    status, out, err = cli_here("stats", three_ranks, "--json")
    (group,) = section(records(out), "group")
    assert status == 0 and (group["ranks"], group["cut"], group["ops_compared"]) == ([0, 1, 2], 25, [1, 25])


def test_rank_option_errors(cli_here, two_ranks, tmp_path):
    status, out, err = cli_here("stats", two_ranks, "--rank", 7)
    assert status == 2 and "rank-7 does not exist (ranks on disk: 0, 1)" in err
    single = layout.rank_dir(two_ranks, 0)
    status, out, err = cli_here("verify", single, "--rank", 0)
    assert status == 2 and "is not a multi-rank journal" in err
    status, out, err = cli_here("verify", single)  # a rank directory alone is an ordinary journal
    assert status == 0 and "verdict: sound" in out
    status, out, err = cli_here("verify", tmp_path / "nothing")
    assert status == 2 and clean(err)


# -- damage -----------------------------------------------------------------------------

def test_missing_rank_directory(cli_here, three_ranks):
    shutil.rmtree(layout.rank_dir(three_ranks, 1))
    for command in ("verify", "stats"):
        status, out, err = cli_here(command, three_ranks)
        assert status == 1, out + err
        assert f"rank 1: {layout.rank_dir(three_ranks, 1)} is missing (the ranks record world size 3)" in out
        assert clean(err)
    status, out, err = cli_here("verify", three_ranks, "--json")
    (problem,) = [r for r in records(out) if r.get("check") == "ranks"]
    assert problem["rank"] == 1 and problem["ok"] is False


def test_rank_records_disagree_on_world_size(cli_here, two_ranks):
    layout.write_rank_record(layout.rank_dir(two_ranks, 1), 1, 3)
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err)
    assert "the ranks disagree on the world size: world size 2 on rank(s) 0; world size 3 on rank(s) 1" in out


def test_rank_record_of_another_rank(cli_here, two_ranks):
    layout.write_rank_record(layout.rank_dir(two_ranks, 1), 0, 2)
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err)
    assert f"{layout.rank_dir(two_ranks, 1) / 'rank.json'} records rank 0, but it is the record of directory rank-1" \
        in out


def _symlink(path: Path) -> None:
    target = path.parent / "elsewhere.json"
    target.write_text(json.dumps({"format": 1, "rank": 1, "world_size": 2}))
    path.symlink_to(target)


HOSTILE = {
    "symlink": _symlink,
    "huge": lambda p: p.write_bytes(b" " * (layout.RECORD_LIMIT + 1)),
    "not json": lambda p: p.write_bytes(b"{\"format\": 1, \"rank\": 1,\xff"),
    "fifo": lambda p: os.mkfifo(p),
    "directory": lambda p: p.mkdir(),
    "wrong types": lambda p: p.write_text(json.dumps({"format": 1, "rank": "1", "world_size": True})),
    "missing": lambda p: None,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_rank_record(cli_here, two_ranks, kind):
    path = layout.rank_dir(two_ranks, 1) / layout.RANK_FILE
    path.unlink()
    HOSTILE[kind](path)
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err), out + err
    damaged = [line for line in out.splitlines() if line.startswith("DAMAGED:")]
    assert len(damaged) == 1 and str(path) in damaged[0]
    status, out, err = cli_here("stats", two_ranks, "--json")
    problems = section(records(out), "problem")
    assert status == 1 and clean(err) and [p["path"] for p in problems] == [str(path)]
    assert problems[0]["rank"] == 1


def test_hostile_global_record(cli_here, two_ranks):
    path = two_ranks / layout.GROUP_DIR / "snapshots" / f"{10:020d}.json"
    path.write_bytes(b"\x1b[2J not json")
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err)
    assert f"DAMAGED: {path}: " in out and "\x1b" not in out


def test_ops_differ_across_ranks(cli_here, tmp_path):
    root = tmp_path / "run"
    ranksjob.write_rank(root, 0, STEPS)
    ranksjob.write_rank(root, 1, STEPS, op_at=lambda i: "bump" if i == 16 else None)  # entry 17: a step on rank 0
    ranksjob.write_group_records(root, 2)
    status, out, err = cli_here("verify", root)
    assert status == 1 and clean(err)
    assert "DAMAGED: index 17 holds different ops across ranks: rank 0 'step', rank 1 'bump'" in out
    assert "ops: identical" not in out
    status, out, err = cli_here("verify", root, "--json")
    (problem,) = [r for r in records(out) if r.get("check") == "ops"]
    assert problem["index"] == 17


def test_global_record_names_a_missing_manifest(cli_here, two_ranks):
    """The newest record's snapshot is protected from retention on every rank: a manifest
    missing under it is damage (and the common snapshot falls back)."""
    (layout.rank_dir(two_ranks, 1) / "snapshots" / "manifests" / "20-1").unlink()
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err)
    record = two_ranks / layout.GROUP_DIR / "snapshots" / f"{20:020d}.json"
    assert f"DAMAGED: {record}: the snapshot at index 20 names manifest 20-1 on rank 1, which is missing" in out
    assert "common snapshot: index 10 (rank 0 10-1, rank 1 10-1)" in out
    status, out, err = cli_here("verify", two_ranks, "--json")
    (problem,) = [r for r in records(out) if r.get("check") == "global_record"]
    assert (problem["rank"], problem["index"], problem["path"]) == (1, 20, str(record))


def test_older_global_record_outliving_a_pruned_manifest_is_not_damage(cli_here, two_ranks):
    """Each rank prunes on its own and rank 0 drops records only at its next confirmation:
    an older record naming a manifest the rank pruned (it holds newer ones) is said, not damage."""
    (layout.rank_dir(two_ranks, 1) / "snapshots" / "manifests" / "10-1").unlink()
    status, out, err = cli_here("verify", two_ranks)
    assert status == 0 and clean(err), out + err
    assert "global record 10: manifest 10-1 on rank 1 was pruned by that rank's retention" in out
    assert "common snapshot: index 20" in out
    status, out, err = cli_here("stats", two_ranks, "--json")
    (group,) = section(records(out), "group")
    assert status == 0 and group["pruned"] == [{"index": 10, "rank": 1, "id": "10-1"}]


def test_global_record_names_a_damaged_manifest(cli_here, two_ranks):
    manifest = layout.rank_dir(two_ranks, 0) / "snapshots" / "manifests" / "10-1"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    manifest.write_bytes(bytes(data))
    status, out, err = cli_here("verify", two_ranks, "--json")
    problems = [r for r in records(out) if r.get("check") == "global_record"]
    assert status == 1 and clean(err) and len(problems) == 1
    assert (problems[0]["rank"], problems[0]["index"]) == (0, 10)
    assert "names manifest 10-1 on rank 0, whose manifest is damaged" in problems[0]["reason"]


def test_damaged_newest_snapshot_on_one_rank_falls_back(cli_here, two_ranks):
    store = layout.rank_dir(two_ranks, 1) / "snapshots"
    older = set()
    for name in ("0-0", "10-1"):
        older |= {c.id for c in Manifest.decode(name, (store / "manifests" / name).read_bytes()).chunks}
    newest = [c.id for c in Manifest.decode("20-1", (store / "manifests" / "20-1").read_bytes()).chunks
              if c.id not in older]
    assert newest, "snapshot 20 shares every chunk with older ones: the fixture changed"
    chunk = region(store, newest[0])  # its loose file, or its range in a pack
    chunk.flip(chunk.size // 2)

    status, out, err = cli_here("stats", two_ranks, "--json")
    (group,) = section(records(out), "group")
    assert group["common_snapshot"] == 10 and group["common_manifests"] == ["10-1", "10-1"]
    assert [(p["index"], p["rank"], p["id"]) for p in group["passed_over"]] == [(20, 1, "20-1")]
    assert status == 0  # a damaged snapshot passed over is not a damaged group: verify says what is damaged

    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err)
    assert "rank 1: snapshot 20-1: DAMAGED" in out
    assert "common snapshot: index 10 (rank 0 10-1, rank 1 10-1)" in out
    assert "passed over index 20: rank 1 snapshot 20-1" in out


def test_damaged_rank_log(cli_here, two_ranks):
    data = layout.rank_dir(two_ranks, 1) / "log" / "data.mdb"
    data.write_bytes(b"\0" * 8192)
    for command in ("log", "stats", "verify"):
        status, out, err = cli_here(command, two_ranks)
        assert status == 1 and clean(err), (command, out, err)
        assert "rank 1" in out and str(layout.rank_dir(two_ranks, 1)) in out, (command, out)
    status, out, err = cli_here("log", two_ranks, "--json")
    assert sum(1 for r in records(out) if r.get("rank") == 0 and "damaged" not in r) == 25  # rank 0 still listed


def test_rank_directory_that_is_not_a_journal(cli_here, two_ranks):
    """A rank directory holding only its rank.json (a crash while the group was created):
    one problem naming it, not one per global record; the cut is unknown, not invented."""
    rank1 = layout.rank_dir(two_ranks, 1)
    shutil.rmtree(rank1 / "log")
    shutil.rmtree(rank1 / "snapshots")
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err)
    assert [line for line in out.splitlines() if line.startswith("DAMAGED")] == \
        [f"DAMAGED: rank 1: {rank1} is not a journal (no log/data.mdb) or an event log (no data.mdb)"]
    assert "cut: unknown" in out and "ops: identical" not in out
    assert "each names a readable manifest at its index on rank(s) 0" in out
    status, out, err = cli_here("log", two_ranks, "--json")
    rows = records(out)
    assert status == 1 and clean(err) and rows[0]["rank"] == 1 and "is not a journal" in rows[0]["damaged"]
    assert len(rows) == 1 + 25


@pytest.mark.parametrize("command", [("show", "3"), ("tail",), ("snapshots",), ("prune",)])
def test_single_journal_commands_name_a_rank_directory(cli_here, two_ranks, command):
    status, out, err = cli_here(command[0], two_ranks, *command[1:])
    assert status == 2 and clean(err)
    assert f"is a multi-rank journal (ranks 0, 1): this command works on one rank's journal, e.g. " \
           f"{layout.rank_dir(two_ranks, 0)}" in err


# -- the cut rule shared with recovery (replay/ranks/cut.py; issue 19, item 2) ------------

def test_a_trailing_cut_record_is_not_counted_in_the_cut_by_log_stats_and_verify(cli_here, two_ranks):
    """Rank 0 ends with the replay.truncate record of a cut at 24 (a recovery that crashed on
    the other rank before it truncated): recovery's cut is 24, not 25, and so is every
    command's; index 25 (the record facing rank 1's entry) is not an op mismatch."""
    from eventlog import EventLog
    from replay.envelope import TRUNCATE_OP, wrap

    with EventLog.open(layout.rank_dir(two_ranks, 0) / "log", durability="sync") as log:
        log.truncate_after(24, then_append=(TRUNCATE_OP, wrap(1, {"after": 24, "dropped": [[25, "x"]],
                                                                  "reason": "test"})))
    status, out, err = cli_here("stats", two_ranks, "--json")
    (group,) = section(records(out), "group")
    assert status == 0 and group["cut"] == 24, out + err
    status, out, err = cli_here("log", two_ranks)
    assert status == 0 and "cut 24" in out.splitlines()[0], out + err
    status, out, err = cli_here("verify", two_ranks, "--json")
    found = records(out)
    assert status == 0 and found[-1]["ok"], out + err
    assert [r for r in found if r["check"] == "ops"][0]["last_index"] == 24


def test_a_rank_behind_the_acknowledged_index_is_damage_naming_it(cli_here, two_ranks):
    """Rank 1 records that index 28 was durable on every rank; rank 0's log ends at 25: rank 0
    was put back from an older copy, and a recovery refuses the group."""
    layout.write_acknowledged(layout.rank_dir(two_ranks, 1), 28)
    status, out, err = cli_here("verify", two_ranks)
    assert status == 1 and clean(err), out + err
    assert f"rank 0's log ends at index 25 ({layout.rank_dir(two_ranks, 0) / 'log'}), below index 28" in out
    assert str(layout.rank_dir(two_ranks, 1) / layout.ACK_FILE) in out
    status, out, err = cli_here("stats", two_ranks, "--json")
    found = records(out)
    (problem,) = section(found, "problem")
    assert status == 1 and (problem["check"], problem["rank"], problem["index"]) == ("acknowledged", 0, 25)
    assert section(found, "group")[0]["acknowledged"] == 28
