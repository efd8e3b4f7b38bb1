"""The project's own promises: .ci/run runs exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command():
    commands = _readme_commands()
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_main_job_command_is_runnable_module():
    # The first command that runs a module is the main job (a CPU-only torch install line may precede it).
    main_job = next(c for c in _readme_commands() if " -m " in c and "pip install torch" not in c)
    module = re.search(r"python -m (\w+)", main_job).group(1)
    assert (ROOT / module / "__main__.py").exists()
