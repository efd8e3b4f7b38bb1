"""replay.environment: the fingerprint a journal records when created, and what recovery
does with a difference (warn, strict, ignore)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import replay
from eventlog import EventLog
from replay import environment


def _ops():
    ops = replay.Ops()

    @ops.op
    def add(state, *, value):
        state["w"] += value

    return ops


def _open(path, **options):
    return replay.Journal.open(path, state={"w": torch.zeros(2)}, ops=_ops(), snapshot=replay.Every(),
                               snapshot_on_close=False, **options)


def _written(path, steps=3):
    with _open(path) as journal:
        for _ in range(steps):
            journal.apply("add", value=1.0)


def _term(path):
    with EventLog.open(path / "log", readonly=True) as log:
        return log.term


def _pretend_created_with(path, **fields):
    created = environment.recorded(path)
    environment.record(path, {**created, **fields})


def test_a_new_journal_records_its_environment_and_the_same_one_reopens_quietly(tmp_path):
    _written(tmp_path)
    created = environment.recorded(tmp_path)
    assert created == environment.fingerprint("cpu")
    assert set(created) >= {"replay", "torch", "python", "device_type", "device_name", "cuda", "cudnn",
                            "deterministic_algorithms", "threads"}
    assert json.loads((tmp_path / environment.FILE).read_text()) == created
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _open(tmp_path) as journal:
            assert journal.recovery.environment == []


def test_differences_are_reported_in_recovery_and_warned(tmp_path):
    _written(tmp_path)
    _pretend_created_with(tmp_path, torch="1.13.0", device_name="Tesla V100")
    with pytest.warns(RuntimeWarning, match="may not be bit-exact") as warned:
        journal = _open(tmp_path)
    with journal:
        assert journal.recovery.environment == [
            f"torch: 1.13.0 when created, {torch.__version__} now",
            f"device_name: Tesla V100 when created, {environment.fingerprint()['device_name']} now"]
        assert journal.recovery.entries_replayed == 3 and journal.state["w"].tolist() == [3.0, 3.0]
    assert "torch: 1.13.0 when created" in str(warned[0].message)
    assert environment.recorded(tmp_path)["torch"] == "1.13.0"  # what creation recorded is never rewritten


def test_thread_count_and_determinism_flags_are_part_of_it(tmp_path):
    threads = torch.get_num_threads()
    _written(tmp_path)
    with replay.Journal.open(tmp_path / "det", state={"w": torch.zeros(2)}, ops=_ops(), deterministic=True):
        pass
    assert environment.recorded(tmp_path / "det")["deterministic_algorithms"] is True
    torch.set_num_threads(threads + 1)
    try:
        with pytest.warns(RuntimeWarning):
            with _open(tmp_path) as journal:
                assert journal.recovery.environment == [f"threads: {threads} when created, {threads + 1} now"]
    finally:
        torch.set_num_threads(threads)
    with pytest.warns(RuntimeWarning):
        with _open(tmp_path / "det") as journal:
            assert "deterministic_algorithms: True when created, False now" in journal.recovery.environment


def test_strict_refuses_before_anything_is_written_and_ignore_skips(tmp_path):
    _written(tmp_path)
    _pretend_created_with(tmp_path, cuda="12.1")
    term, listing = _term(tmp_path), sorted(p.name for p in (tmp_path / "snapshots" / "manifests").iterdir())
    with pytest.raises(replay.EnvironmentMismatchError) as err:
        _open(tmp_path, environment="strict")
    assert err.value.differences == [f"cuda: 12.1 when created, {torch.version.cuda or 'unset'} now"]
    assert str(tmp_path) in str(err.value) and "cuda: 12.1 when created" in str(err.value)
    assert _term(tmp_path) == term  # the term was not bumped: nothing was written
    assert sorted(p.name for p in (tmp_path / "snapshots" / "manifests").iterdir()) == listing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _open(tmp_path, environment="ignore") as journal:
            assert journal.recovery.environment == []
    with pytest.raises(ValueError, match="environment"):
        _open(tmp_path, environment="loose")


def test_a_journal_without_a_fingerprint_compares_nothing_and_gets_none_later(tmp_path):
    _written(tmp_path)
    (tmp_path / environment.FILE).unlink()  # a journal created before fingerprints existed
    with _open(tmp_path, environment="strict") as journal:
        journal.apply("add", value=1.0)
        assert journal.recovery.environment == []
    assert environment.recorded(tmp_path) is None  # its creation environment is unknown, not today's


def test_differences_function():
    now = environment.fingerprint()
    assert environment.differences(None, now) == []
    assert environment.differences(now, dict(now)) == []
    then = {**now, "python": "3.9.0", "extra": 1}
    del then["cudnn"]
    lines = environment.differences(then, now)
    assert lines[0] == f"python: 3.9.0 when created, {now['python']} now"
    assert "extra: 1 when created, unset now" in lines
    assert len(lines) == 2 + (now["cudnn"] is not None)
