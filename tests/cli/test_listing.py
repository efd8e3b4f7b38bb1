"""`log`, `show`, `stats`, `snapshots`: what they list matches what the job wrote."""

from __future__ import annotations

import json

import torch

from tests.cli import tinyjob
from tests.cli.conftest import cli

ENTRIES = 35
TERM_OF = {i: 1 if i <= 25 else 2 for i in range(1, ENTRIES + 1)}
OP_OF = {i + 1: tinyjob.payload(i)[0] for i in range(ENTRIES)}


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_log_lists_every_entry_once_per_line_without_terminal_codes(journal_master):
    result = cli("log", journal_master)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == ENTRIES
    assert "\x1b" not in result.stdout  # piped: plain text, no colour codes
    for index, line in enumerate(lines, 1):
        fields = line.split()
        assert fields[0] == str(index) and fields[1] == f"t{TERM_OF[index]}" and fields[4] == OP_OF[index]
    assert "x=f32[4] lr=0.01" in lines[0]  # tensors summarised as dtype[shape]


def test_log_json_filters_by_range_op_and_term(journal_master):
    result = cli("log", journal_master, "--json", "--from", 20, "--to", 33, "--op", "bump", "--term", 2)
    assert result.returncode == 0, result.stderr
    got = [r["index"] for r in records(result.stdout)]
    assert got == [i for i in range(20, 34) if OP_OF[i] == "bump" and TERM_OF[i] == 2] == [27, 30, 33]
    assert all(r["term"] == 2 and r["op"] == "bump" and r["payload_bytes"] > 0 for r in records(result.stdout))


def test_show_decodes_the_payload_with_tensor_statistics_and_values(journal_master):
    result = cli("show", journal_master, 4, "--json", "--values")
    assert result.returncode == 0, result.stderr
    (entry,) = records(result.stdout)
    x = tinyjob.payload(3)[1]["x"]
    assert entry["op"] == "step" and entry["checksum_ok"] is True and entry["version"] == 1
    stats = entry["payload"]["x"]["tensor"]
    assert stats["values"] == x.tolist() and stats["shape"] == [4] and stats["dtype"] == "float32"
    assert abs(stats["norm"] - torch.linalg.vector_norm(x.double()).item()) < 1e-9
    assert stats["min"] == x.min().item() and stats["max"] == x.max().item()


def test_stats_counts_ops_terms_snapshots_and_estimates_replay(journal_master):
    result = cli("stats", journal_master, "--json")
    assert result.returncode == 0, result.stderr
    by_section: dict[str, list] = {}
    for r in records(result.stdout):
        by_section.setdefault(r["section"], []).append(r)
    (log,) = by_section["log"]
    assert (log["first_index"], log["last_index"], log["entries"]) == (1, ENTRIES, ENTRIES)
    assert {r["op"]: r["count"] for r in by_section["op"]} == {
        op: sum(1 for o in OP_OF.values() if o == op) for op in set(OP_OF.values())}
    assert [(t["term"], t["first_index"], t["entries"]) for t in by_section["term"]] == [(1, 1, 25), (2, 26, 10)]
    assert [s["id"] for s in by_section["snapshot"]] == ["0-0", "10-1", "20-1", "30-2"]  # 0-0: the base of the history
    (estimate,) = by_section["estimate"]
    assert estimate["from_index"] == 30 and estimate["entries"] == ENTRIES - 30


def test_snapshots_lists_sizes_and_ratios(journal_master):
    result = cli("snapshots", journal_master, "--json", "--verify")
    assert result.returncode == 0, result.stderr
    rows = records(result.stdout)
    assert [(r["index"], r["term"], r["status"]) for r in rows] == [(0, 0, "ok"), (10, 1, "ok"), (20, 1, "ok"),
                                                                      (30, 2, "ok")]
    for r in rows:
        assert r["bytes_logical"] == 4 * (12 + 3 + 12)  # weight, bias, table as float32
        assert r["ratio"] == r["bytes_logical"] / r["bytes_stored"]
