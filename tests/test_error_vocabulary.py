"""One error vocabulary (replay/INVARIANTS.md, "One error vocabulary"): every package's
damage errors share one `DamageError` class, `replay.audit.is_damage` is that isinstance
check, the CLI exits 1 exactly for it, and Closed / Locked / UnsafeFile mean one thing
in every package. New error classes must be put in DAMAGE or left out of it on purpose:
a class of a vocabulary module missing from both lists fails the census test."""

from __future__ import annotations

import importlib
import inspect

import pytest

import eventlog
import replay
import snapshots
from replay.audit import is_damage
from replay.cli.errors import EXIT_DAMAGE, exit_status
from torch_eventlog import errors as kinds

# Every module that defines an error of the public vocabulary.
# (eventlog.safefile and snapshots.safefile import UnsafeFileError from torch_eventlog.errors.)
MODULES = ["torch_eventlog.errors", "eventlog.errors", "snapshots.errors", "replay.errors",
           "replay.replica.errors", "replay.replica.status", "replay.environment", "replay.ranks.layout",
           "replay.forking", "replay.loadstate", "replay.rng_check", "replay.loader", "replay.jsonfile"]

DAMAGE = {
    "torch_eventlog.errors": ["DamageError", "UnsafeFileError"],
    "eventlog.errors": ["CorruptEntryError", "DamagedSegmentError", "DamagedLogError", "FormatError",
                        "SegmentDamage", "SegmentRejectedError"],
    "snapshots.errors": ["CorruptSnapshotError", "CorruptFileError"],
    "replay.errors": ["DivergenceError", "RankDivergenceError"],
    "replay.replica.errors": ["ReplicaDamageError"],
    "replay.environment": ["EnvironmentFileError"],
    "replay.ranks.layout": ["RankRecordError"],
}


def _errors(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__]


def _case(cls: type):
    return pytest.param(cls, id=f"{cls.__module__}.{cls.__qualname__}")


DAMAGE_CLASSES = [getattr(importlib.import_module(m), name) for m, names in DAMAGE.items() for name in names]
OTHER_CLASSES = [cls for m in MODULES for cls in _errors(m) if cls not in DAMAGE_CLASSES]


def _bare(cls: type) -> BaseException:
    return cls.__new__(cls)  # the rule looks at the class only; constructors differ


def test_the_census_covers_every_error_of_the_vocabulary_modules():
    assert OTHER_CLASSES and all(cls in [c for m in MODULES for c in _errors(m)] for cls in DAMAGE_CLASSES)


@pytest.mark.parametrize("cls", [_case(c) for c in DAMAGE_CLASSES])
def test_every_damage_error_is_damage_and_exits_1(cls):
    assert issubclass(cls, kinds.DamageError)
    assert is_damage(_bare(cls))
    assert exit_status(_bare(cls)) == EXIT_DAMAGE


@pytest.mark.parametrize("cls", [_case(c) for c in OTHER_CLASSES])
def test_every_other_error_is_not_damage_and_does_not_exit_1(cls):
    assert not issubclass(cls, kinds.DamageError)
    assert not is_damage(_bare(cls))
    assert exit_status(_bare(cls)) != EXIT_DAMAGE


def test_one_damage_class_for_every_package():
    assert eventlog.DamageError is snapshots.DamageError is replay.DamageError is kinds.DamageError
    for cls in DAMAGE_CLASSES:
        try:
            raise _bare(cls)
        except replay.DamageError:  # a real base: `except` sees it (an ABC registration would not be)
            pass


@pytest.mark.parametrize("kind,members", [
    (kinds.ClosedError, [eventlog.ClosedError, snapshots.ClosedError, replay.ClosedError]),
    (kinds.LockedError, [eventlog.LockedError, snapshots.LockedError]),
])
def test_closed_and_locked_mean_one_thing_in_every_package(kind, members):
    for cls in members:
        assert issubclass(cls, kind) and not issubclass(cls, kinds.DamageError)
        assert exit_status(_bare(cls)) == 2


def test_unsafe_file_is_one_class_and_damage():
    from eventlog.safefile import UnsafeFileError as log_unsafe
    from snapshots.safefile import UnsafeFileError as store_unsafe

    assert log_unsafe is store_unsafe is kinds.UnsafeFileError
    assert issubclass(kinds.UnsafeFileError, kinds.DamageError)


def test_the_package_roots_still_catch_their_own():
    """The kinds are extra bases: every existing `except LogError/SnapshotError/ReplayError` still works."""
    assert issubclass(eventlog.CorruptEntryError, eventlog.LogError)
    assert issubclass(snapshots.CorruptSnapshotError, snapshots.SnapshotError)
    assert issubclass(replay.ReplicaDamageError, replay.ReplicaError)
    assert issubclass(replay.ReplicaDamageError, replay.ReplayError)
