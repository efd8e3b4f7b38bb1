"""replay.worker_signals: DataLoader workers defer the preemption signals sent to the
whole group, run the user's worker_init_fn, and still end when their parent ends them.
(The crash row, a real trainer and os.killpg, is tests/crash/test_preemption_workers.py.)"""

from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

import pytest
import torch

import replay
from replay.worker_signals import DeferSignals


class Echo(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([float(i)])


def _mark(path: str, worker_id: int) -> None:
    Path(path, f"init-{worker_id}").write_text(str(os.getpid()))


def _blocked(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("SigBlk:")), 16)


def _threads() -> list[tuple[int, str, str, bool]]:
    """Every thread of this process: (tid, Python name or "", kernel name, blocks SIGTERM)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    found = []
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        try:
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        blocked = int(fields["SigBlk"], 16) >> (signal.SIGTERM - 1) & 1
        found.append((tid, names.get(tid, ""), fields["Name"].strip(), bool(blocked)))
    return found


def _probe(path: str, worker_id: int) -> None:
    """In a worker after DeferSignals: record the blocked-signal mask and every thread,
    then signal ourselves as a sender other than the parent (the worker itself): it must
    be ignored."""
    Path(path, f"mask-{worker_id}").write_text(str(_blocked(os.getpid())))
    Path(path, f"threads-{worker_id}").write_text(repr(_threads()))
    os.kill(os.getpid(), signal.SIGTERM)


def test_the_loader_wraps_the_users_worker_init_fn_which_still_runs(tmp_path):
    import functools

    cursor = replay.DataCursor(8, seed=0)
    loader = replay.JournaledLoader(Echo(), cursor, batch_size=2, num_workers=2,
                                    worker_init_fn=functools.partial(_mark, str(tmp_path)))
    assert isinstance(loader.dataloader.worker_init_fn, DeferSignals)
    for batch in loader:
        cursor.consume(batch.ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init-0", "init-1"]


def test_a_worker_defers_the_preemption_signals_and_survives_one_from_elsewhere(tmp_path):
    """SIGTERM from a sender that is not the parent (here the worker itself, as a group's
    signal would be) is taken and ignored: the pass completes with every batch."""
    import functools

    cursor = replay.DataCursor(8, seed=0)
    loader = replay.JournaledLoader(Echo(), cursor, batch_size=2, num_workers=2, worker_signals=[signal.SIGUSR2],
                                    worker_init_fn=functools.partial(_probe, str(tmp_path)))
    seen = []
    try:
        for batch in loader:
            cursor.consume(batch.ids)
            seen.extend(batch.ids)
    except RuntimeError as error:
        threads = {p.name: p.read_text() for p in tmp_path.glob("threads-*")}
        raise AssertionError(f"a worker did not survive: {error}; its threads at the signal "
                             f"(tid, name, kernel name, blocks SIGTERM): {threads}") from error
    assert sorted(seen) == list(range(8))
    for worker in (0, 1):
        # Every thread but the deferral one (in sigwaitinfo, which unblocks what it waits
        # for) blocks the signal: a thread that does not would take a group's SIGTERM.
        threads = ast.literal_eval((tmp_path / f"threads-{worker}").read_text())
        exposed = [t for t in threads if not t[3] and t[1] != "replay-worker-signals"]
        assert not exposed, f"worker {worker}: threads that take SIGTERM: {exposed}"
        mask = int((tmp_path / f"mask-{worker}").read_text())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            assert mask >> (signum - 1) & 1, f"worker {worker} does not defer {signal.Signals(signum).name}"


def test_the_parent_can_still_terminate_a_worker():
    """multiprocessing's terminate() (DataLoader's shutdown of a stuck worker, and at exit)
    is a SIGTERM from the parent: it still ends the worker, with status 0 as PyTorch's
    own worker handler gives."""
    import multiprocessing

    ready = multiprocessing.get_context("fork").Event()
    process = multiprocessing.get_context("fork").Process(target=_defer_then_wait, args=(ready,))
    process.start()
    try:
        assert ready.wait(60)
        process.terminate()
        process.join(60)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def _defer_then_wait(ready) -> None:
    DeferSignals()(0)
    ready.set()
    while True:
        signal.pause()


def test_sigkill_cannot_be_deferred():
    with pytest.raises(ValueError, match="SIGKILL"):
        DeferSignals(signals=[signal.SIGKILL])


# A thread started in the worker before any worker_init_fn runs, as PyTorch's own worker
# setup may start native pool threads there. os.register_at_fork cannot be undone, so the
# hook is registered once and does something only while a test arms it.
_EARLY_THREAD = {"armed": False}


def _start_early_thread() -> None:
    if _EARLY_THREAD["armed"]:
        import threading

        threading.Thread(target=threading.Event().wait, name="started-at-fork", daemon=True).start()


os.register_at_fork(after_in_child=_start_early_thread)


def test_threads_the_worker_starts_before_the_init_fn_block_the_signals_too(tmp_path):
    """The failure seen under load: a thread started before DeferSignals ran (in the
    child, right after the fork) took the group's SIGTERM and the worker died. The loader
    forks its workers with the signals already blocked, so such threads inherit the block."""
    import functools

    cursor = replay.DataCursor(8, seed=0)
    loader = replay.JournaledLoader(Echo(), cursor, batch_size=2, num_workers=2,
                                    worker_init_fn=functools.partial(_probe, str(tmp_path)))
    _EARLY_THREAD["armed"] = True
    seen = []
    try:
        for batch in loader:
            cursor.consume(batch.ids)
            seen.extend(batch.ids)
    finally:
        _EARLY_THREAD["armed"] = False
    assert sorted(seen) == list(range(8))
    for worker in (0, 1):
        threads = ast.literal_eval((tmp_path / f"threads-{worker}").read_text())
        assert any(t[1] == "started-at-fork" for t in threads), threads  # the scenario happened
        exposed = [t for t in threads if not t[3] and t[1] != "replay-worker-signals"]
        assert not exposed, f"worker {worker}: threads that take SIGTERM: {exposed}"


class Faulting(torch.utils.data.Dataset):
    """Sample 0 dies of SIGSEGV in the worker, as a crash in native code would (the first:
    a batch already sent would have its tensors fetched from the dying worker)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 0:
            os.kill(os.getpid(), signal.SIGSEGV)
        return torch.tensor([float(i)])


def _iterate_faulting_loader(conn) -> None:
    """In a forked child, so the deliberate segfault and PyTorch's SIGCHLD watch of the
    dead worker stay out of the test process: send what the DataLoader reported."""
    import faulthandler
    import resource

    # The worker dies of the signal: no core file in the working directory where cores are on.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    faulthandler.enable()  # pytest's plugin has it on already; the test must not depend on that
    cursor = replay.DataCursor(8, seed=0, shuffle=False)
    loader = replay.JournaledLoader(Faulting(), cursor, batch_size=2, num_workers=1)
    try:
        for batch in loader:
            cursor.consume(batch.ids)
        conn.send("no error")
    except Exception as error:  # sent whatever it is, so that the test says it
        conn.send(f"{type(error).__name__}: {error}")


def test_a_worker_killed_by_a_fault_leaves_its_python_stack_where_faulthandler_is_on(capfd):
    """PyTorch's worker handler prints one line and no stack (a segfault seen once in CI
    could not be diagnosed). With faulthandler on in the trainer, as pytest has it, the
    worker's stderr holds its threads' stacks before that line, and the worker still dies
    of the signal as PyTorch reports it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_iterate_faulting_loader, args=(send,))
    child.start()
    try:
        assert receive.poll(60), "the loader neither failed nor finished"
        reported = receive.recv()
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
    assert reported.startswith("RuntimeError: DataLoader worker"), reported
    err = capfd.readouterr().err.replace("\0", "")  # PyTorch's handler writes its line's NUL too
    assert "Fatal Python error: Segmentation fault" in err, err
    assert "Current thread" in err and "in __getitem__" in err, err  # the faulting sample's frame
    # PyTorch's own handler still runs after the dump: its line and the parent's report are unchanged.
    assert err.index("Fatal Python error") < err.index("Unexpected segmentation fault encountered in worker"), err
