"""Journals written by the library, and a `cli` helper that runs `python -m replay` as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import tinyjob
from tests.warm import run_replay

ROOT = Path(__file__).resolve().parents[2]
OPS = ["--ops", "tests.cli.tinyjob:ops", "--state", "tests.cli.tinyjob:make_state"]


def cli(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m replay ARGS` from the repository root (so --ops can import tests.cli.tinyjob),
    in a child process that starts warm (tests/warm.py)."""
    return run_replay(args, cwd=ROOT, timeout=timeout)


def cli_process(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """A real `python -m replay ARGS` interpreter, for what a warm child would not show
    (the entry point itself, which modules a fresh interpreter imports)."""
    return subprocess.run([sys.executable, "-m", "replay", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cli_here(capsys):
    """cli_here(*args) -> (exit status, stdout, stderr) of `replay ARGS` run in this process:
    for tests that run many commands (no interpreter and torch import per call)."""
    from replay.__main__ import main

    def run(*args):
        capsys.readouterr()
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture(scope="session")
def journal_master(tmp_path_factory) -> Path:
    """35 entries in two terms (25, then a restart and 10 more); snapshots every 10, the last 3 kept."""
    path = tmp_path_factory.mktemp("journal") / "run"
    tinyjob.write(path, 25)
    tinyjob.write(path, 10, start=25)
    return path


@pytest.fixture
def journal(journal_master, tmp_path) -> Path:
    """A private copy of the journal, free to damage or prune."""
    copy = tmp_path / "run"
    shutil.copytree(journal_master, copy)
    return copy
