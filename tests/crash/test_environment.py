"""Hostile environment.json files (row 13's rule applied to the fingerprint): each is
reported as damage naming the path, never a traceback, a hang or an unbounded read; a
"warn" open recovers anyway and says so, a "strict" one refuses before writing."""

from __future__ import annotations

import os

import pytest

from eventlog import EventLog
from replay import environment
from tests.replay.test_environment import _open  # the same one-tensor journal the unit tests open

pytestmark = [pytest.mark.crash, pytest.mark.fault_hostile_files]


def _fifo(path):
    os.mkfifo(path)  # a reader without O_NONBLOCK would wait for a writer forever


def _symlink_to_zero(path):
    os.symlink("/dev/zero", path)  # endless bytes, and not our file


def _directory(path):
    path.mkdir()


def _writer(data: bytes):
    return lambda path: path.write_bytes(data)


GOOD = b'{"format": 1, "torch": "2.0"'
HOSTILE = {
    "empty": _writer(b""),
    "oversized": _writer(b'{"format": 1, "pad": "' + b"x" * (2 * environment.MAX_BYTES) + b'"}'),
    "not_utf8": _writer(GOOD + b', "name": "\xff\xfe"}'),
    "nan": _writer(GOOD + b', "threads": NaN}'),
    "duplicate_key": _writer(GOOD + b', "torch": "9.9"}'),
    "deep_nesting": _writer(b"[" * 100_000 + b"]" * 100_000),
    "top_level_list": _writer(b"[1, 2, 3]"),
    "nested_value": _writer(GOOD + b', "device": {"name": "x"}}'),
    "long_string": _writer(GOOD + b', "device_name": "' + b"y" * 10_000 + b'"}'),
    "format_missing": _writer(b'{"torch": "2.0"}'),
    "format_true": _writer(b'{"format": true}'),
    "truncated": _writer(GOOD),
    "fifo": _fifo,
    "symlink_to_dev_zero": _symlink_to_zero,
    "directory": _directory,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_fingerprint_is_damage_naming_the_path(tmp_path, kind):
    with _open(tmp_path) as journal:
        journal.apply("add", value=1.0)
    target = tmp_path / environment.FILE
    target.unlink()
    HOSTILE[kind](target)
    with pytest.raises(environment.EnvironmentFileError) as err:
        environment.recorded(tmp_path)
    assert str(target) in str(err.value) and len(str(err.value)) < 600
    with EventLog.open(tmp_path / "log", readonly=True) as log:
        term = log.term
    with pytest.raises(environment.EnvironmentFileError):
        _open(tmp_path, environment="strict")
    with EventLog.open(tmp_path / "log", readonly=True) as log:
        assert log.term == term  # refused before the term was bumped
    with pytest.warns(RuntimeWarning, match="environment.json"):
        journal = _open(tmp_path)
    with journal:
        assert journal.recovery.environment[0].startswith("environment.json: ")
        assert journal.state["w"].tolist() == [1.0, 1.0]
    assert os.path.lexists(target)  # the evidence is left for the operator, not overwritten
