"""The README's recipes run as a user would run them: each block tagged ``<!-- recipe: NAME -->``
is written to a file in an empty directory and executed there with this interpreter.

A recipe that stops working fails here, so the documentation cannot drift from the code.
Recipes print what they prove and must exit 0; a recipe may assert.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TAGGED_BLOCK = re.compile(r"<!-- recipe: ([a-z0-9-]+) -->\s*\n```python\n(.*?)\n```", re.S)
TORCHRUN_BLOCK = re.compile(r"<!-- recipe-torchrun: ([a-z0-9-]+) -->\s*\n```python\n(.*?)\n```\s*\n```console\n\$ (.*?)\n```",
                            re.S)


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
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=220)
    assert result.returncode == 0, f"recipe {name!r} failed:\n{result.stdout}\n{result.stderr}"


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
    assert output.count("recovered from snapshot at index") >= 2, output
