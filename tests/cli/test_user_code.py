"""`state`/`diff`/`export` import the user's ops and state factory: a module that runs a script
when imported is refused with exit 2 and the hint, and --help says what the module must be."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.warm import run_replay

from tests.cli.conftest import ROOT

HINT = "move the training loop under `if __name__ == '__main__':`"
pytestmark = pytest.mark.timeout(120)

SCRIPTS = {
    "exits": """
        import sys
        ops = None
        sys.exit(0)
    """,
    "parses_argv": """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("data_dir")
        args = parser.parse_args()
    """,
    "trains_forever": """
        import time
        while True:
            time.sleep(0.05)
    """,
    "misspelt_guard": """
        ops = None
        def make():
            return {}
        if __name__ == "main":
            pass
    """,
}


def run_cli(cwd, *args) -> subprocess.CompletedProcess:
    return run_replay(args, cwd=cwd)  # a fresh process that imports the user module first


COMMANDS = {"state": ["state", "{j}", "--at", 5, "--out", "o.st"],
            "export": ["export", "{j}", "--at", 5, "--out", "o.st"],  # 5 is no snapshot's index: it must import
            "diff": ["diff", "{j}", 3, 5]}


@pytest.mark.parametrize("name, command", [(name, "state") for name in sorted(SCRIPTS)] +
                         [("exits", "export"), ("trains_forever", "diff")])
def test_a_module_that_runs_a_script_when_imported_is_refused_with_the_hint(name, command, journal_master, tmp_path):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SCRIPTS[name]))
    for command in ([str(a).replace("{j}", str(journal_master)) for a in COMMANDS[command]],):
        result = run_cli(tmp_path, *command, "--ops", f"{name}:ops", "--state", f"{name}:make",
                         "--import-timeout", 2)
        assert result.returncode == 2, (command, result.stderr)
        assert HINT in result.stderr and f"{name}:ops" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.st").exists()


def test_a_module_without_side_effects_imports(journal_master, tmp_path):
    result = run_cli(ROOT, "state", journal_master, "--at", 5, "--out", tmp_path / "o.st",
                     "--ops", "tests.cli.tinyjob:ops", "--state", "tests.cli.tinyjob:make_state", "--import-timeout", 30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["state", "diff", "export"])
def test_help_says_the_module_must_import_without_side_effects(command):
    result = run_cli(ROOT, command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "without side effects" in text and "if __name__ == '__main__':" in text
