"""`state` and `diff`: point-in-time reconstruction equals a plain fold of the same ops, bit for bit."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from replay import components
from tests.cli import tinyjob
from tests.cli.conftest import OPS, cli


reference = tinyjob.reference


def reference_tensors(index: int) -> dict[str, torch.Tensor]:
    return {".".join(map(str, path)): leaf for path, leaf in components.leaves(reference(index))
            if isinstance(leaf, torch.Tensor)}


def load(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_state_at_an_index_between_snapshots_is_bit_identical_to_the_reference(journal_master, tmp_path):
    out = tmp_path / "at23.safetensors"
    result = cli("state", journal_master, "--at", 23, *OPS, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert summary["snapshot"] == "20-1" and summary["replayed"] == [21, 24]  # newest snapshot <= 23, then replay
    tensors, meta = load(out)
    expected = reference_tensors(23)
    assert sorted(tensors) == sorted(expected) == ["model.bias", "model.weight", "table"]
    for name, t in expected.items():
        assert torch.equal(tensors[name], t), name
    assert meta["replay.index"] == "23" and meta["replay.snapshot"] == "20-1"
    assert json.loads(meta["replay.values"]) == {"counters.steps": reference(23)["counters"]["steps"]}


def test_state_before_the_later_snapshots_replays_from_the_initial_snapshot(journal_master, tmp_path):
    out = tmp_path / "at5.safetensors"
    result = cli("state", journal_master, "--at", 5, *OPS, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "from snapshot 0-0, replayed 5 entries" in result.stdout
    tensors, _ = load(out)
    for name, t in reference_tensors(5).items():
        assert torch.equal(tensors[name], t), name


def test_state_without_any_usable_snapshot_is_refused_not_guessed_from_the_factory(journal, tmp_path):
    # Retention keeps the initial snapshot; without it, the --state factory's values would
    # be the base of the replay, right only if it rebuilt the run's exact initial state.
    (journal / "snapshots" / "manifests" / "0-0").unlink()
    result = cli("state", journal, "--at", 5, *OPS, "--out", tmp_path / "at5.safetensors")
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "no snapshot loads" in result.stderr and "index 0" in result.stderr
    assert not (tmp_path / "at5.safetensors").exists()


def test_diff_lists_exactly_the_changed_tensors_with_the_size_of_the_change(journal_master):
    # Entry 24 is a `bump` of one table row: only `table` changes, by value 23 in 4 elements.
    assert tinyjob.payload(23) == ("bump", {"row": 1, "value": 23.0})
    result = cli("diff", journal_master, 23, 24, *OPS, "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["name"], r["changed"], r["max_abs"], r["norm"]) for r in rows] == [("table", 4, 23.0, 46.0)]

    wide = cli("diff", journal_master, 20, 26, *OPS, "--json", "--all")
    rows = {r["name"]: r for r in map(json.loads, wide.stdout.splitlines())}
    before, after = reference_tensors(20), reference_tensors(26)
    for name in before:
        delta = (after[name].double() - before[name].double())
        assert rows[name]["changed"] == int(before[name].ne(after[name]).sum())
        assert rows[name]["norm"] == torch.linalg.vector_norm(delta).item()
    assert rows["counters.steps"]["detail"] == f"{reference(20)['counters']['steps']} -> {reference(26)['counters']['steps']}"
