"""`replay export`: plain safetensors of chosen components, from a snapshot without user code, or by replay."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import snapshots
from tests.cli import tinyjob
from tests.cli.conftest import OPS, ROOT, cli


def reference(index: int) -> dict:
    state = tinyjob.make_state()
    for i in range(index):
        op, payload = tinyjob.payload(i)
        getattr(tinyjob, op)(state, **payload)
    return state


def snapshot_indexes(journal) -> list[int]:
    with snapshots.SnapshotStore(journal / "snapshots") as store:
        return [info.index for info in store.list()]


def fresh_linear() -> torch.nn.Linear:
    torch.manual_seed(99)
    return torch.nn.Linear(4, 3)


def test_a_snapshot_index_exports_the_model_as_plain_safetensors_without_user_code(journal_master, tmp_path):
    at = snapshot_indexes(journal_master)[0]
    out = tmp_path / "model.safetensors"
    # The --ops/--state given name a module that cannot import: at a snapshot index they are never resolved.
    result = cli("export", journal_master, "--at", at, "--only", "model", "--out", out,
                 "--ops", "no_such_module_anywhere:ops", "--state", "no_such_module_anywhere:make", "--json")
    assert result.returncode == 0, result.stderr
    (summary,) = map(json.loads, result.stdout.splitlines())
    assert (summary["index"], summary["replayed"], summary["component"], summary["tensors"]) == (at, 0, "model", 2)
    model = fresh_linear()
    model.load_state_dict(load_file(str(out)), strict=True)  # names without the "model." prefix
    expected = reference(at)["model"]
    for name, t in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["replay.index"] == str(at) and meta["replay.snapshot"] == summary["snapshot"]


def test_no_user_module_is_imported_in_process(journal_master, tmp_path):
    at = snapshot_indexes(journal_master)[-1]
    code = ("import sys; from replay.__main__ import main; "
            f"rc = main(['export', {str(journal_master)!r}, '--at', '{at}', '--out', {str(tmp_path / 'all.st')!r}, "
            "'--ops', 'tests.cli.tinyjob:ops', '--state', 'tests.cli.tinyjob:make_state']); "
            "assert rc == 0, rc; assert 'tests.cli.tinyjob' not in sys.modules, 'imported'; print('clean')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr
    tensors = load_file(str(tmp_path / "all.st"))
    assert sorted(tensors) == ["model.bias", "model.weight", "table"]  # several components: prefixes kept
    assert torch.equal(tensors["table"], reference(at)["table"])


def test_the_default_index_is_the_newest_snapshot(journal_master, tmp_path):
    result = cli("export", journal_master, "--only", "table", "--out", tmp_path / "t.st", "--json")
    assert result.returncode == 0, result.stderr
    newest = snapshot_indexes(journal_master)[-1]
    assert json.loads(result.stdout)["index"] == newest
    assert torch.equal(load_file(str(tmp_path / "t.st"))["table"], reference(newest)["table"])  # a bare tensor keeps its name


def test_another_index_needs_ops_and_says_so_then_replays(journal_master, tmp_path):
    out = tmp_path / "m23.st"
    assert 23 not in snapshot_indexes(journal_master)
    refused = cli("export", journal_master, "--at", 23, "--only", "model", "--out", out)
    assert refused.returncode == 2 and not out.exists()
    assert "no sound snapshot at index 23" in refused.stderr and "index 20" in refused.stderr
    assert "--ops" in refused.stderr and "--state" in refused.stderr
    result = cli("export", journal_master, "--at", 23, "--only", "model.weight,model.bias", "--out", out, *OPS)
    assert result.returncode == 0, result.stderr
    model = fresh_linear()
    model.load_state_dict(load_file(str(out)), strict=True)
    assert torch.equal(model.weight, reference(23)["model"].weight)


def test_prefix_selection_and_names_that_are_not_there(journal_master, tmp_path, cli_here):
    def cli(*args):  # in this process: five commands
        return subprocess.CompletedProcess(args, *cli_here(*args))

    at = snapshot_indexes(journal_master)[-1]
    result = cli("export", journal_master, "--at", at, "--only", "model.bias", "--out", tmp_path / "b.st")
    assert result.returncode == 0, result.stderr
    assert list(load_file(str(tmp_path / "b.st"))) == ["bias"]
    kept = cli("export", journal_master, "--at", at, "--only", "model", "--keep-prefix", "--out", tmp_path / "k.st")
    assert kept.returncode == 0 and sorted(load_file(str(tmp_path / "k.st"))) == ["model.bias", "model.weight"]
    missing = cli("export", journal_master, "--at", at, "--only", "modle", "--out", tmp_path / "x.st")
    assert missing.returncode == 2 and "'modle' is not in the snapshot" in missing.stderr
    values = cli("export", journal_master, "--at", at, "--only", "counters", "--out", tmp_path / "c.st")
    assert values.returncode == 2 and "holds no tensor" in values.stderr
    past = cli("export", journal_master, "--at", 99, "--out", tmp_path / "p.st")
    assert past.returncode == 2 and "past the end" in past.stderr


def test_only_a_submodule_strips_the_whole_selected_prefix_and_loads_strictly(tmp_path, cli_here):
    from tests.cli import optimjob

    journal = tmp_path / "run"
    optimjob.write(journal, 20)
    out = tmp_path / "encoder.safetensors"
    status, stdout, err = cli_here("export", journal, "--only", "model.encoder", "--out", out, "--json")
    assert status == 0, err
    assert json.loads(stdout)["component"] == "model.encoder"
    exported = load_file(str(out))
    assert sorted(exported) == sorted(optimjob.Net().encoder.state_dict())  # "0.weight", not "encoder.0.weight"
    encoder = optimjob.Net().encoder
    encoder.load_state_dict(exported, strict=True)
    state = optimjob.make_state()
    for i in range(20):
        optimjob.train(state, seed=i)
    for name, t in state["model"].encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], t), name

    # --keep-prefix keeps the full dotted names; the text output says what was dropped
    status, _, err = cli_here("export", journal, "--only", "model.encoder", "--keep-prefix", "--out", out)
    assert status == 0, err
    assert sorted(load_file(str(out))) == sorted(f"model.encoder.{n}" for n in encoder.state_dict())
    status, stdout, err = cli_here("export", journal, "--only", "model.encoder", "--out", out)
    assert status == 0 and "(names without the 'model.encoder.' prefix)" in stdout


def test_the_help_says_which_prefix_is_dropped(cli_here, capsys):
    import pytest

    with pytest.raises(SystemExit):
        cli_here("export", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--only model.encoder writes 0.weight" in text
