"""Importing the user's code named on the command line: ``--ops MODULE:ATTR``, ``--state MODULE:FACTORY``.

The current directory is importable (as it is for ``python -m``), so ``--ops train:ops``
finds ./train.py from the installed ``replay`` script too. Any failure to import is a
one-line CliError naming the spec; the user's own traceback is kept for --debug.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Mapping

from replay import components
from replay.ops import Ops

from .errors import CliError


def resolve(spec: str, option: str) -> Any:
    """The object named by 'package.module:attr.path'; CliError if the spec is malformed or does not import."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise CliError(f"{option} {spec!r}: expected MODULE:ATTR (e.g. mytrain.ops:ops)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise CliError(f"{option} {spec!r} does not import: {type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{option} {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def load_ops(spec: str) -> Ops:
    """The replay.Ops named by `spec`: an Ops object, or a zero-argument callable returning one."""
    obj = resolve(spec, "--ops")
    if not isinstance(obj, Ops) and callable(obj):
        obj = _call(obj, spec, "--ops")
    if not isinstance(obj, Ops):
        raise CliError(f"--ops {spec!r} is a {type(obj).__name__}, not a replay.Ops (or a function returning one)")
    return obj


def load_state(spec: str) -> tuple[Mapping[str, Any], dict[str, str]]:
    """(state, component kinds) from the zero-argument factory named by `spec`.

    The factory must build the journal's state layout (the same component names and
    shapes as the run that wrote the log); the values are overwritten from a snapshot.
    """
    factory = resolve(spec, "--state")
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
