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


# The packages of this distribution; each may use another only through its root
# (`import snapshots`, `from eventlog import EventLog`): the names its __init__ exports.
# torch_eventlog is the shared vocabulary, imported by every package as torch_eventlog.errors.
PACKAGES = ("eventlog", "snapshots", "replay")
SHARED = {"torch_eventlog", "torch_eventlog.errors"}


def _cross_package_imports(path: Path, own: str) -> list[str]:
    """`module: import` for each import in `path` of another package's private part: a
    submodule (only the root is public) or an underscore name."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in targets:
            root = module.split(".")[0]
            if root == own or module in SHARED or root not in PACKAGES:
                continue
            if module != root or (name or "").startswith("_"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
                break  # one line per import statement
    return found


def test_no_module_imports_another_packages_private_modules():
    """Issue 20: every module of replay/, eventlog/ and snapshots/ reaches another package
    through its public root only, so each package's insides can change freely."""
    found = [line for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for line in _cross_package_imports(path, package)]
    assert not found, "private imports across packages:\n" + "\n".join(found)


MAX_CLASS_LINES = 350


def _long_classes(path: Path) -> list[str]:
    """`module:line Class: N lines` for each class in `path` longer than MAX_CLASS_LINES,
    counted from its `class` line to its last line, docstrings and comments included."""
    import ast

    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]


def test_no_product_class_is_longer_than_the_limit():
    """Issue 20: no class in replay/, eventlog/ or snapshots/ is over 350 lines; a class
    that grows past it is split by job into collaborators in modules of their own."""
    found = [line for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for line in _long_classes(path)]
    assert not found, "classes over the limit:\n" + "\n".join(found)
