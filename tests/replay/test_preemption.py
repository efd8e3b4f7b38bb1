"""replay.Preemption in one process: options, the main-thread rule, where the stop happens,
and the previous handlers coming back (the crash row is tests/crash/test_preemption.py)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

import replay


def _ops():
    ops = replay.Ops()

    @ops.op
    def add(state, *, value, signal_me=None):
        state["w"] += value
        if signal_me is not None:
            os.kill(os.getpid(), signal_me)  # the signal arrives while the handler runs
        return float(state["w"].sum())

    return ops


def _open(path, **options):
    return replay.Journal.open(path, state={"w": torch.zeros(3)}, ops=_ops(), snapshot=replay.Every(), **options)


def test_options_are_checked():
    with pytest.raises(ValueError, match="then"):
        replay.Preemption(then="ignore")
    with pytest.raises(ValueError, match="grace"):
        replay.Preemption(grace=0)
    with pytest.raises(ValueError, match="cannot catch"):
        replay.Preemption(signals=(signal.SIGKILL,))
    with pytest.raises(ValueError, match="at least one"):
        replay.Preemption(signals=())
    assert replay.Preemption().signals == (signal.SIGTERM, signal.SIGUSR1)
    assert replay.Preemption.exit_status(signal.SIGTERM) == 143


def test_open_from_another_thread_is_refused_before_anything_is_created(tmp_path):
    errors = []

    def worker():
        try:
            _open(tmp_path / "j", preemption=replay.Preemption())
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and "main thread" in str(errors[0])
    assert not (tmp_path / "j").exists()


def test_close_restores_the_previous_handlers(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    journal = _open(tmp_path, preemption=replay.Preemption())
    assert all(signal.getsignal(s) != before[s] for s in before)
    journal.close()
    assert {s: signal.getsignal(s) for s in before} == before
    journal = _open(tmp_path, preemption=replay.Preemption())
    journal.abandon()
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_inside_a_handler_lets_the_apply_finish_then_snapshots_closes_and_raises(tmp_path):
    journal = _open(tmp_path, preemption=replay.Preemption(signals=(signal.SIGUSR1,), then="raise"))
    journal.apply("add", value=1.0)
    with pytest.raises(replay.PreemptedError) as err:
        journal.apply("add", value=2.0, signal_me=signal.SIGUSR1)
    assert err.value.signum == signal.SIGUSR1
    assert journal.state["w"].tolist() == [3.0, 3.0, 3.0]  # the interrupted handler ran to its end
    with pytest.raises(replay.ClosedError):
        journal.apply("add", value=1.0)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    with _open(tmp_path) as reopened:
        assert reopened.recovery.entries_replayed == 0 and reopened.recovery.snapshot_index == 2
        assert reopened.count() == 2 and reopened.state["w"].tolist() == [3.0, 3.0, 3.0]


def test_a_signal_between_calls_stops_at_once_and_exits_with_128_plus_signum(tmp_path):
    journal = _open(tmp_path, preemption=replay.Preemption(signals=(signal.SIGTERM,)))
    journal.apply("add", value=1.0)
    with pytest.raises(SystemExit) as err:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, on the main thread
    assert err.value.code == 143
    with pytest.raises(replay.ClosedError):
        journal.flush()
    with _open(tmp_path) as reopened:
        assert reopened.recovery.entries_replayed == 0 and reopened.count() == 1


def test_an_exception_replaced_by_the_stop_is_reported_on_stderr_naming_it(tmp_path, capfd):
    """A handler that raises while a signal is pending: the stop (exit 143) replaces the
    exception, so it is reported first, named, with its traceback, never hidden."""
    ops = replay.Ops()

    @ops.op
    def fail(state, *, signal_me):
        os.kill(os.getpid(), signal_me)
        raise KeyError("the handler's own error")

    journal = replay.Journal.open(tmp_path, state={"w": torch.zeros(3)}, ops=ops,
                                  preemption=replay.Preemption(signals=(signal.SIGTERM,)))
    with pytest.raises(SystemExit) as err:
        journal.apply("fail", signal_me=signal.SIGTERM)
    assert err.value.code == 143
    stderr = capfd.readouterr().err
    assert "KeyError" in stderr and "the handler's own error" in stderr and "signal 15" in stderr
    assert "Traceback" in stderr and "not re-raised" in stderr


def test_a_clean_stop_reports_nothing(tmp_path, capfd):
    journal = _open(tmp_path, preemption=replay.Preemption(signals=(signal.SIGUSR1,), then="raise"))
    with pytest.raises(replay.PreemptedError):
        journal.apply("add", value=2.0, signal_me=signal.SIGUSR1)
    assert capfd.readouterr().err == ""


def test_installed_signals_names_those_a_journal_catches(tmp_path):
    from replay.preemption import installed_signals

    assert installed_signals() == ()
    journal = _open(tmp_path, preemption=replay.Preemption(signals=(signal.SIGUSR2, signal.SIGTERM)))
    try:
        assert sorted(installed_signals()) == sorted([signal.SIGUSR2, signal.SIGTERM])
    finally:
        journal.close()
    assert installed_signals() == ()
