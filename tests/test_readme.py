"""The README's recipes run as a user would run them: each block tagged ``<!-- recipe: NAME -->``
is written to a file in an empty directory and executed there with this interpreter, as
`python SCRIPT` started warm (tests/warm.run_script: forked from a server that imported
torch once; the recipe's own subprocesses are real interpreters).

A recipe that stops working fails here, so the documentation cannot drift from the code.
Recipes print what they prove and must exit 0; a recipe may assert.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.warm import run_replay, run_script

README = Path(__file__).resolve().parent.parent / "README.md"
TAGGED_BLOCK = re.compile(r"<!-- recipe: ([a-z0-9-]+) -->\s*\n```python\n(.*?)\n```", re.S)
TORCHRUN_BLOCK = re.compile(r"<!-- recipe-torchrun: ([a-z0-9-]+) -->\s*\n```python\n(.*?)\n```\s*\n```console\n\$ (.*?)\n```",
                            re.S)
REQUEST_LOG = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) /\S* HTTP/1\.1')


def recipes() -> dict[str, str]:
    found = {}
    for name, code in TAGGED_BLOCK.findall(README.read_text()):
        assert name not in found, f"README.md: two recipes are named {name!r}"
        found[name] = code
    return found


def test_the_readme_has_its_recipes():
    # A renamed or untagged block would silently stop being tested.
    assert set(recipes()) >= {"quickstart", "dataloader", "fine-tune", "inference", "preemption", "fork"}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(recipes()))
def test_recipe_runs(tmp_path, name):
    script = tmp_path / f"recipe_{name.replace('-', '_')}.py"
    script.write_text(recipes()[name] + "\n")
    result = run_script(script, cwd=tmp_path, timeout=220)  # `python SCRIPT`, started warm (tests/warm.py)
    assert result.returncode == 0, f"recipe {name!r} failed:\n{result.stdout}\n{result.stderr}"
    # What a user sees is what the recipe prints: no request log of a test server (moto's werkzeug)
    requests = [line for line in result.stderr.splitlines() if REQUEST_LOG.search(line)]
    assert not requests, f"recipe {name!r} floods stderr with {len(requests)} request log lines: {requests[:2]}"


def test_the_readme_has_its_torchrun_recipe():
    assert [name for name, _, _ in TORCHRUN_BLOCK.findall(README.read_text())] == ["ddp"]


@pytest.mark.timeout(240)
def test_torchrun_recipe_runs_with_its_command(tmp_path):
    """The multi-rank recipe, run with the README's own command line (torchrun from this
    interpreter's environment): rank 1 kills itself once, torchrun restarts the group,
    and both ranks finish all 100 steps."""
    [(name, code, command)] = TORCHRUN_BLOCK.findall(README.read_text())
    script = code.splitlines()[0].removeprefix("# ").strip()
    (tmp_path / script).write_text(code + "\n")
    words = command.split()
    environment = dict(os.environ)
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        environment[key] = value
    assert words[0] == "torchrun" and words[-1] == script
    words[0:1] = [sys.executable, "-m", "torch.distributed.run"]
    result = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=220, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rank in (0, 1):
        assert f"rank {rank}: 100 steps, acknowledged through entry" in output, output
    assert "exitcode: -9" in output, output  # the crash happened, and was recovered from
    # The survivor of a dead peer says so in one line: no gloo traceback ("Connection closed by peer")
    assert "Traceback" not in output and "[rank0]:" not in output, output
    assert output.count("recovered from snapshot at index") >= 2, output


@pytest.mark.timeout(240)
def test_the_dataloader_recipe_is_importable_by_the_cli(tmp_path):
    """`replay state/diff --ops recipe:make_ops --state recipe:make_state` take the recipe as
    it is: the ops and the state factory live at module level, and replaying an index that
    is not a snapshot rebuilds each batch from its ids and seed without the training loop."""
    (tmp_path / "recipe.py").write_text(recipes()["dataloader"] + "\n")
    train = ("import torch, recipe; from safetensors.torch import save_file; "
             "recipe.train('run', 13); "
             "save_file({k: v.contiguous() for k, v in recipe.train('other', 9).state_dict().items()}, 'at9.st')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(README.parent), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", train], cwd=tmp_path, capture_output=True, text=True, timeout=200,
                            env=env)
    assert result.returncode == 0, result.stderr
    user_code = ["--ops", "recipe:make_ops", "--state", "recipe:make_state"]
    result = run_replay(["state", "run", "--at", "9", *user_code, "--out", "state9.st", "--json"], cwd=tmp_path,
                        timeout=200, env=env)
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file
    import torch

    rebuilt, straight = load_file(str(tmp_path / "state9.st")), load_file(str(tmp_path / "at9.st"))
    assert straight and all(torch.equal(rebuilt[f"model.{k}"], v) for k, v in straight.items())
    result = run_replay(["diff", "run", "9", "13", *user_code, "--top", "2"], cwd=tmp_path, timeout=200, env=env)
    assert result.returncode == 0, result.stderr
    assert "changed between index 9 and 13" in result.stdout
