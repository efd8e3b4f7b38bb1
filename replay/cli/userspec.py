"""Importing the user's code named on the command line: ``--ops MODULE:ATTR``, ``--state MODULE:FACTORY``.

The current directory is importable (as it is for ``python -m``), so ``--ops train:ops``
finds ./train.py from the installed ``replay`` script too. Any failure to import is a
one-line CliError naming the spec; the user's own traceback is kept for --debug.

The module must define the ops and the state factory without side effects: importing a
training script runs it. A script is recognised, and refused with exit 2 and the hint
`SCRIPT_HINT`, when importing it

- raises SystemExit (it called sys.exit, or its argparse rejected the argv it saw:
  during the import sys.argv is just the module's name, as for a script run bare);
- takes longer than `--import-timeout` seconds (default `IMPORT_TIMEOUT`; a training
  loop started at import time, interrupted by SIGALRM);
- or when its source guards the script part with a misspelt name
  (``if __name__ == "main":``, which never holds, so the loop would have to live
  elsewhere), or the spec names the module ``__main__`` itself.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import signal
import sys
import threading
from typing import Any, Mapping

from replay import components
from replay.ops import Ops

from .errors import CliError

IMPORT_TIMEOUT = 30.0
SCRIPT_HINT = ("keep the ops and the state factory importable without side effects: move the training "
               "loop under `if __name__ == '__main__':`")
USER_CODE_NOTE = ("MODULE is imported, so it must define the ops and the state factory without side effects "
                  "(the training loop under `if __name__ == '__main__':`); a module that exits or runs for "
                  "longer than --import-timeout while importing is refused.")


class _ImportTimedOut(BaseException):
    """Raised by the SIGALRM handler inside a user module's import that runs too long (a
    BaseException, so the module's own `except Exception` does not swallow it)."""


def add_import_timeout(p) -> None:
    """The --import-timeout option of commands that import user code."""
    p.add_argument("--import-timeout", type=float, default=IMPORT_TIMEOUT, metavar="SECONDS",
                   help=f"refuse a module whose import runs longer (default {IMPORT_TIMEOUT:g}; 0: no limit)")


def resolve(spec: str, option: str, timeout: float = IMPORT_TIMEOUT) -> Any:
    """The object named by 'package.module:attr.path'; CliError if the spec is malformed,
    does not import, or importing it runs a script (module doc)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise CliError(f"{option} {spec!r}: expected MODULE:ATTR (e.g. mytrain.ops:ops)")
    if module_name == "__main__":
        raise CliError(f"{option} {spec!r}: name the module by its import name, not __main__; {SCRIPT_HINT}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = _import(module_name, timeout, lambda: _check_main_guard(module_name, option, spec))
    except CliError:
        raise
    except SystemExit as exc:
        raise CliError(f"{option} {spec!r}: importing {module_name!r} ran a script (it exited with "
                       f"{exc.code!r}); {SCRIPT_HINT}") from None
    except _ImportTimedOut:
        raise CliError(f"{option} {spec!r}: importing {module_name!r} was still running after {timeout:g} s "
                       f"(a training loop at import time?); {SCRIPT_HINT}, or raise --import-timeout") from None
    except Exception as exc:  # the user's module may raise anything while importing
        raise CliError(f"{option} {spec!r} does not import: {type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{option} {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _import(module_name: str, timeout: float, check):
    """check(), then import_module, with sys.argv reduced to the module's name and, on the
    main thread, an alarm after `timeout` seconds (0: none)."""
    argv = sys.argv
    sys.argv = [module_name]
    alarm = timeout > 0 and threading.current_thread() is threading.main_thread()
    if alarm:
        previous = signal.signal(signal.SIGALRM, _time_out)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        check()  # finding a submodule's source imports its parents: under the same guards
        return importlib.import_module(module_name)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        sys.argv = argv


def _time_out(signum, frame):
    raise _ImportTimedOut()


def _check_main_guard(module_name: str, option: str, spec: str) -> None:
    """CliError when the module's source compares __name__ with a string that is not
    '__main__' at top level (a misspelt guard); nothing when the source cannot be read."""
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return  # the import itself will say what is wrong
    origin = getattr(found, "origin", None)
    if not origin or not origin.endswith(".py"):
        return
    try:
        with open(origin, "rb") as f:
            module = ast.parse(f.read(), origin)
    except (OSError, SyntaxError, ValueError):
        return
    for node in module.body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            sides = [test.left, *test.comparators]
            names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
            strings = [s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)]
            if names and strings and strings[0] != "__main__":
                raise CliError(f"{option} {spec!r}: {origin} line {node.lineno} guards with "
                               f"`__name__ == {strings[0]!r}`, which is never true; {SCRIPT_HINT}")


def load_ops(spec: str, timeout: float = IMPORT_TIMEOUT) -> Ops:
    """The replay.Ops named by `spec`: an Ops object, or a zero-argument callable returning one."""
    obj = resolve(spec, "--ops", timeout)
    if not isinstance(obj, Ops) and callable(obj):
        obj = _call(obj, spec, "--ops")
    if not isinstance(obj, Ops):
        raise CliError(f"--ops {spec!r} is a {type(obj).__name__}, not a replay.Ops (or a function returning one)")
    return obj


def load_state(spec: str, timeout: float = IMPORT_TIMEOUT) -> tuple[Mapping[str, Any], dict[str, str]]:
    """(state, component kinds) from the zero-argument factory named by `spec`.

    The factory must build the journal's state layout (the same component names and
    shapes as the run that wrote the log); the values are overwritten from a snapshot.
    """
    factory = resolve(spec, "--state", timeout)
    if not callable(factory):
        raise CliError(f"--state {spec!r} is a {type(factory).__name__}, not a factory function")
    state = _call(factory, spec, "--state")
    try:
        return state, components.check_state(state)
    except TypeError as exc:
        raise CliError(f"--state {spec!r} built an unusable state: {exc}") from exc


def _call(fn, spec: str, option: str):
    try:
        return fn()
    except Exception as exc:
        raise CliError(f"{option} {spec!r} raised when called: {type(exc).__name__}: {exc}") from exc
