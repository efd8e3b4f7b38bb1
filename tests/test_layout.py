"""One journal layout: every path under a journal directory is spelled in replay/layout.py.

The scan below reads replay/'s modules as syntax trees and fails on a name of the layout
(``"log"``, ``"snapshots"``, ``"rank.json"``, ``f"rank-{r}"``, ...) used to build or test
a path: the right side of ``/`` (or the left), an argument of ``Path(...)``,
``os.path.join(...)``, ``.joinpath(...)``, ``.with_name(...)``, a ``.name`` compared with
it, or a ``.startswith(...)`` prefix. Messages, JSON keys and option values that merely
say "log" or "group" are none of these, so they never trip it.

Every module of replay/ but layout.py itself (the one place the names are spelled) is
checked, with no exceptions. The layout's own functions are
checked here too, so a change of a name shows up as one failing assertion.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from replay import layout
from replay.supervisor import layout as supervisor_layout

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "replay"

# Path components of the journal tree (replay/layout.py, plus the eventlog and snapshot
# store names it documents). A literal equal to one of these, or a "/"-joined literal
# holding one, used as a path is a second spelling.
NAMES = frozenset({
    layout.LOG_DIR, layout.LOG_DATA_FILE, layout.SNAPSHOTS_DIR, layout.MANIFESTS_DIR, "chunks", "archive",
    layout.ENVIRONMENT_FILE, layout.REPLICA_FILE, layout.SUPERVISOR_DIR, layout.RANK_FILE, layout.ACK_FILE,
    layout.GROUP_DIR, layout.ATTEMPTS_FILE,
})
# f-strings, with each replacement field written as {} (its format spec kept): the
# templated names of the tree.
SHAPES = frozenset({"rank-{}", "heartbeat-a{}-p{}", "crash-a{}-p{}.json", "dump-a{}-p{}.txt", "{:020d}.json"})
PREFIXES = frozenset({layout.RANK_DIR_PREFIX, "heartbeat-a", "crash-a", "dump-a"})

# Modules still spelling journal paths by hand, each owned by other work (report them,
# do not grow the list): path -> what is left there.
LAYOUT = PACKAGE / "layout.py"  # the one place the names are spelled


def _shape(node: ast.AST) -> str | None:
    """The literal text of a str constant, or an f-string with each field as {spec}; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                spec = _shape(value.format_spec) if value.format_spec is not None else ""
                parts.append("{" + (":" + spec if spec else "") + "}")
        return "".join(parts)
    return None


def _is_layout_name(text: str | None) -> bool:
    if text is None:
        return False
    if text in SHAPES:
        return True
    return any(part in NAMES for part in text.split("/")) if "/" in text else text in NAMES


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def path_literals(source: str) -> list[tuple[int, str]]:
    """(line, literal) for every layout name `source` uses as a path component (module doc)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        candidates: list[ast.AST] = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            candidates = [node.left, node.right]
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if name in {"Path", "PurePath", "PosixPath", "join", "joinpath", "with_name"}:
                candidates = list(node.args)
            elif name == "startswith":
                prefixes = [_shape(a) for a in node.args]
                found.extend((a.lineno, a.col_offset, p) for a, p in zip(node.args, prefixes) if p in PREFIXES)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "name" for s in sides):
                candidates = sides
        found.extend((c.lineno, c.col_offset, text) for c in candidates if _is_layout_name(text := _shape(c)))
    return [(line, text) for line, _, text in sorted(found)]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != LAYOUT)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_journal_path_is_spelled_outside_the_layout(path):
    relative = str(path.relative_to(ROOT))
    found = path_literals(path.read_text())
    assert not found, (f"{relative} spells journal paths by hand at "
                       + ", ".join(f"line {line} ({text!r})" for line, text in found)
                       + ": use (or add) a function of replay/layout.py")


def test_every_module_but_the_layout_is_checked():
    """Only replay/layout.py is left out of the check above (nothing skips)."""
    checked = {p.relative_to(ROOT) for p in _modules()}
    assert LAYOUT.is_file() and LAYOUT.relative_to(ROOT) not in checked
    assert (PACKAGE / "forking.py").relative_to(ROOT) in checked


@pytest.mark.parametrize("source, expected", [
    ('p = root / "log"', [(1, "log")]),
    ('p = "log" / x', [(1, "log")]),
    ("p = root / 'snapshots' / 'manifests'", [(1, "snapshots"), (1, "manifests")]),
    ('p = root / f"rank-{r}"', [(1, "rank-{}")]),
    ('p = d / f"{i:020d}.json"', [(1, "{:020d}.json")]),
    ('p = os.path.join(root, "log/data.mdb")', [(1, "log/data.mdb")]),
    ('p = Path(root, "environment.json")', [(1, "environment.json")]),
    ('ok = d.name != "log"', [(1, "log")]),
    ('ok = n.startswith("rank-")', [(1, "rank-")]),
    ('p = records / f"crash-a{a}-p{p}.json"', [(1, "crash-a{}-p{}.json")]),
])
def test_the_scan_finds_hand_spelled_paths(source, expected):
    assert path_literals(source) == expected


@pytest.mark.parametrize("source", [
    'print(f"log {path}: damaged")',            # a message
    'record = {"section": "log", "group": 1}',  # JSON keys
    'durability = "group"',                     # an option value
    'p = results / f"rank-{r}.json"',           # not a rank directory: a demo's result file
    'ok = op == "log"',                         # no .name compared
    'x = a / "journal"',                        # a scratch directory's name, not the layout's
])
def test_the_scan_passes_what_is_not_a_journal_path(source):
    assert path_literals(source) == []


def test_layout_functions_spell_the_documented_tree(tmp_path):
    d = tmp_path
    assert layout.log_dir(d) == d / "log"
    assert layout.log_data_file(d) == d / "log" / "data.mdb"
    assert layout.lmdb_file(d / "bare") == d / "bare" / "data.mdb"
    assert layout.snapshots_dir(d) == d / "snapshots"
    assert layout.manifests_dir(d) == d / "snapshots" / "manifests"
    assert layout.environment_file(d) == d / "environment.json"
    assert layout.replica_file(d) == d / "replica.json"
    assert layout.supervisor_dir(d) == d / "supervisor"
    assert layout.rank_dir(d, 3) == d / "rank-3"
    assert layout.rank_file(d / "rank-3") == d / "rank-3" / "rank.json"
    assert layout.acknowledged_file(d / "rank-3") == d / "rank-3" / "acknowledged.json"
    assert layout.group_dir(d) == d / "group"
    assert layout.global_record_file(d, 12) == d / "group" / "snapshots" / "00000000000000000012.json"
    sup = d / "supervisor"
    assert layout.attempts_file(sup) == sup / "attempts.jsonl"
    assert layout.heartbeat_file(sup, 2, 77) == sup / "heartbeat-a2-p77"
    assert layout.crash_file(sup, 2, 77) == sup / "crash-a2-p77.json"
    assert layout.dump_file(sup, 2, 77) == sup / "dump-a2-p77.txt"


def test_going_back_up_refuses_what_is_not_the_layout(tmp_path):
    assert layout.journal_of_log(tmp_path / "j" / "log") == tmp_path / "j"
    assert layout.group_root_of(tmp_path / "g" / "rank-0") == tmp_path / "g"
    with pytest.raises(ValueError, match="bare"):
        layout.journal_of_log(tmp_path / "bare")
    with pytest.raises(ValueError, match="rank-01"):
        layout.group_root_of(tmp_path / "rank-01")  # not canonical decimal: not a rank directory
    with pytest.raises(ValueError, match="-1"):
        layout.global_record_file(tmp_path, -1)


def test_global_record_names_round_trip():
    assert layout.global_record_index(layout.global_record_file("/g", 42).name) == 42
    for name in ("42.json", "00000000000000000042.json.tmp", "0000000000000000004x.json"):
        assert layout.global_record_index(name) is None


def test_attempt_files_lists_one_kind_of_one_attempt(tmp_path):
    assert layout.attempt_files(tmp_path / "missing", "crash", 1) == []
    for path in (layout.crash_file(tmp_path, 1, 9), layout.crash_file(tmp_path, 1, 5),
                 layout.crash_file(tmp_path, 10, 5), layout.heartbeat_file(tmp_path, 1, 5)):
        path.write_text("{}")
    assert layout.attempt_files(tmp_path, "crash", 1) == [tmp_path / "crash-a1-p5.json", tmp_path / "crash-a1-p9.json"]
    with pytest.raises(ValueError, match="crashes"):
        layout.attempt_files(tmp_path, "crashes", 1)


def test_supervisor_layout_is_the_same_names():
    """replay/supervisor/layout.py re-exports; a second copy of a name could drift."""
    assert supervisor_layout.records_dir is layout.supervisor_dir
    assert supervisor_layout.ATTEMPTS == layout.ATTEMPTS_FILE
    assert supervisor_layout.of_attempt is layout.attempt_files
