"""A Journal is its parts (replay/journal.py's module doc): the apply path (replay.applier),
the ending (replay.closer), built by replay.assembly. What the split must keep: help(Journal.open)
tells every keyword, replay run's link hears the apply path and the closing alike, and no part
asks which group, replica or preemption it holds."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import replay
from replay.assembly import keywords_documented
from replay.errors import ClosedError, PayloadRejectedError
from replay.supervisor.link import NoSupervisor

from .harness import open_journal
from .models import make_ops, make_state

pytestmark = pytest.mark.timeout(120)


def test_help_of_open_tells_every_keyword_before_what_it_returns():
    doc = inspect.getdoc(replay.Journal.open)
    documented = set(re.findall(r"^    (\w+): ", doc, re.M))
    assert set(inspect.signature(replay.Journal.open).parameters) <= documented
    assert doc.index("\nArgs:\n") < doc.index("\nReturns:\n") < doc.index("\nExample::")
    assert "help(Journal.open)" not in doc  # the source's pointer was replaced by the section itself


def test_keywords_documented_refuses_a_docstring_without_its_args_pointer():
    def open_(cls, path):
        """Open.

        Returns:
            A journal.
        """

    with pytest.raises(ValueError, match="'Args: ' paragraph before 'Returns:'"):
        keywords_documented(open_)


# Run in a child: compiles the project's own modules as `python -OO` would (docstrings and
# asserts stripped) and imports replay. Only the project is recompiled: a real `-OO`
# interpreter would also recompile all of torch from source on a fresh venv (about 20
# CPU-seconds), and what this test guards is the project's own use of its docstrings.
_STRIPPED_IMPORT = """
import importlib.machinery, sys
root = sys.argv[1]

class Stripped(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):  # never cached: the stripped bytecode must not reach __pycache__
        return compile(self.get_data(self.path), self.path, "exec", dont_inherit=True, optimize=2)

loaders = (Stripped, importlib.machinery.SOURCE_SUFFIXES)
packages = tuple(f"{root}/{name}" for name in ("eventlog", "snapshots", "replay"))
def hook(path):  # the checkout's root and its packages; never the venv, which may live inside it
    if path != root and not path.startswith(packages):
        raise ImportError(path)
    return importlib.machinery.FileFinder(path, loaders)

sys.path_hooks.insert(0, hook)
sys.path_importer_cache.clear()
import replay
import eventlog.log, snapshots.store
for module in (replay.journal, eventlog.log, snapshots.store):
    assert type(module.__loader__) is Stripped and module.__doc__ is None, module
print(replay.Journal.open.__doc__)
"""


def test_replay_imports_without_docstrings():
    """Compiled as ``python -OO`` compiles (docstrings stripped): Journal.open is left as it is, and replay still imports."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _STRIPPED_IMPORT, str(root)],
                          cwd=root, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


class _Recording(NoSupervisor):
    """replay run's link, recording what the journal tells it."""

    def __init__(self):
        self.calls = []

    def phase(self, name, index=0):
        self.calls.append(("phase", name, index))

    def applying(self, op, index):
        self.calls.append(("applying", op, index))

    def applied(self, index):
        self.calls.append(("applied", index))

    def failed(self, phase, op, index, exc, handler=True):
        self.calls.append(("failed", phase, op, index, type(exc).__name__, handler))

    def close(self):
        self.calls.append(("close",))


def test_the_supervisor_link_hears_the_apply_path_and_the_closing(tmp_path):
    journal = open_journal(tmp_path, make_state(), make_ops(), async_snapshots=False)
    link = _Recording()
    journal._link = link  # as replay.supervisor.link.supervised_open attaches it after open
    journal.apply("add", row=0, value=1.0)
    with pytest.raises(RuntimeError, match="boom"):
        journal.apply("boom", row=1)  # the handler's own failure: rolled back, reported as the job's
    with pytest.raises(PayloadRejectedError):
        journal.apply("train_step", ids=[], seed=1)  # refused before appending: still the job's
    journal.close()
    with pytest.raises(ClosedError):
        journal.apply("add", row=0, value=1.0)  # not the job's failure
    assert link.calls == [
        ("applying", "add", 1), ("applied", 1),
        ("applying", "boom", 2), ("failed", "applying", "boom", 2, "RuntimeError", True),
        ("failed", "applying", "train_step", 2, "PayloadRejectedError", True),
        ("phase", "closing", 1), ("close",),
        ("failed", "applying", "add", 2, "ClosedError", False),
    ]
    assert journal._link is link


@pytest.mark.parametrize("module", ["replay.journal", "replay.applier", "replay.closer", "replay.cadence",
                                    "replay.snapshotter"])
def test_no_part_asks_which_group_replica_or_preemption_it_holds(module):
    """The seams hold in every part, as tests/replay/test_group_contract.py checks for journal.py:
    nothing of replay.ranks or replay.replica is imported, no part checks what it was given."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module} if node.module else {alias.name for alias in node.names}
    assert not {name for name in imported if name.startswith(("ranks", "replica"))}, imported
    asked = [ast.unparse(node) for node in ast.walk(tree)
             if (isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops)
                 and any(w in ast.unparse(node.left) for w in ("group", "replica", "shipper", "preemption")))
             or (isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance"
                 and any(w in ast.unparse(node.args[0]) for w in ("group", "replica", "preemption")))]
    assert not asked, asked
