"""The README's recipes run as a user would run them: each block tagged ``<!-- recipe: NAME -->``
is written to a file in an empty directory and executed there with this interpreter.

A recipe that stops working fails here, so the documentation cannot drift from the code.
Recipes print what they prove and must exit 0; a recipe may assert.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TAGGED_BLOCK = re.compile(r"<!-- recipe: ([a-z0-9-]+) -->\s*\n```python\n(.*?)\n```", re.S)


def recipes() -> dict[str, str]:
    found = {}
    for name, code in TAGGED_BLOCK.findall(README.read_text()):
        assert name not in found, f"README.md: two recipes are named {name!r}"
        found[name] = code
    return found


def test_the_readme_has_its_recipes():
    # A renamed or untagged block would silently stop being tested.
    assert set(recipes()) >= {"quickstart", "dataloader", "fine-tune", "inference", "preemption"}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(recipes()))
def test_recipe_runs(tmp_path, name):
    script = tmp_path / f"recipe_{name.replace('-', '_')}.py"
    script.write_text(recipes()[name] + "\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=220)
    assert result.returncode == 0, f"recipe {name!r} failed:\n{result.stdout}\n{result.stderr}"
