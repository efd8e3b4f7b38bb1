"""A torchrun-like launcher for tests: N rank processes on gloo over 127.0.0.1, killed and restarted.

A `Launcher` holds one TCPStore (the parent is its server) and runs generations of a
group: `launcher.run(target, args)` starts `world_size` processes, each joins a gloo
process group under a fresh store prefix (a restarted group never reads a dead
generation's addresses: the trap of pytorch/pytorch#135712), runs
``target(rank, world_size, *args)`` and leaves the group. Like torchrun's elastic agent,
the launcher can SIGKILL one rank at a chosen moment; as soon as any rank ends with a
non-zero status it terminates the others (SIGTERM, then SIGKILL after a short grace) and
returns the `Generation` for the caller to restart.

Rank processes come from a "forkserver" whose one server process imported torch, replay
and the workload once and never ran an op (so no OpenMP pool is forked): a rank starts
in tens of milliseconds instead of the ~2 s of ``import torch``. Each rank's stdout and
stderr go to ``<logs>/gen-<g>-rank-<r>.log``; an exception in a rank is written as JSON
(type, message, when) next to it, so the parent never unpickles anything a rank wrote.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.distributed as dist

# Imported by the fork server before any rank is forked from it ("__main__" first, as
# multiprocessing does by default: a rank then skips re-running the main module).
# DistributedDataParallel's constructor imports torch._dynamo (~2 s) on first use.
PRELOAD = ["__main__", "torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo", "torch.distributed.fsdp",
           "torch.distributed.device_mesh", "safetensors.torch",
           "replay", "tests.distributed.workload"]
# The environment every rank runs under (see issue 13: a restarted torchrun group must not
# share the dead group's rendezvous store).
RANK_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}


def context():
    """The multiprocessing context ranks are started from (its fork server preloads PRELOAD)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@dataclass(frozen=True)
class Kill:
    """SIGKILL `rank` `after` seconds after every rank of the generation joined the group (if it still runs)."""

    rank: int
    after: float


@dataclass(frozen=True)
class RankExit:
    """How one rank ended: `exitcode` (negative: the signal), the exception it reported
    (`error`: type name, `message`), `ended` (unix time it reported the error), its log tail."""

    rank: int
    exitcode: int | None
    error: str | None = None
    message: str | None = None
    ended: float | None = None
    log: str = ""

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


@dataclass
class Generation:
    """One run of the group: each rank's exit, which rank the launcher killed (and when), which died first."""

    number: int
    exits: list[RankExit] = field(default_factory=list)
    killed: int | None = None
    killed_at: float | None = None
    first_failure: int | None = None
    first_failure_at: float | None = None
    timed_out: bool = False

    @property
    def clean(self) -> bool:
        return not self.timed_out and all(e.exitcode == 0 for e in self.exits)

    def describe(self) -> str:
        lines = [f"generation {self.number}: killed={self.killed} first_failure={self.first_failure} "
                 f"timed_out={self.timed_out}"]
        for e in self.exits:
            lines.append(f"  rank {e.rank}: exit {e.exitcode} {e.error or ''}: {(e.message or '')[:500]}")
            lines.append("    log: " + e.log[-1500:].replace("\n", "\n    log: "))
        return "\n".join(lines)


def _rank_entry(port: int, prefix: str, rank: int, world_size: int, env: dict, pg_timeout: float,
                log_path: str, error_path: str, joined_path: str, target: Callable, args: tuple) -> None:
    """A rank process: its own log, env and one intra-op thread; joins the group, runs target, leaves."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(RANK_ENV)
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=pg_timeout)
    try:
        store = dist.PrefixStore(prefix, dist.TCPStore("127.0.0.1", port, None, False, timeout=timeout))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
        open(joined_path, "w").close()
        try:
            target(rank, world_size, *args)
        finally:
            # Leave the group on every path, as a torchrun worker should. (On torch 2.13 CPU
            # with gloo, a survivor that skipped it still exited with its own status, no
            # SIGABRT; after a dead peer it returns at once. The launcher kills a rank that
            # hangs here anyway.)
            dist.destroy_process_group()
    except BaseException as exc:
        traceback.print_exc()
        report = {"error": type(exc).__name__, "message": str(exc)[:4000], "ended": time.time()}
        with open(error_path, "w") as f:
            json.dump(report, f)
        os._exit(1)


class Launcher:
    """Generations of a `world_size`-rank gloo group on 127.0.0.1, one store for all of them.

    Call sequence: ``Launcher(...)`` (starts the store), `run` once per generation (each
    returns when every rank has ended), `close` (or use it as a context manager).
    """

    def __init__(self, world_size: int, logs: str | os.PathLike, *, pg_timeout: float = 30.0,
                 grace: float = 2.0, deadline: float = 90.0):
        """`pg_timeout`: the process group's (and store's) timeout in seconds (at most 60 in
        tests: a bug fails instead of hanging); `grace`: seconds between SIGTERM and SIGKILL
        of survivors; `deadline`: a generation still running after it is killed whole and
        marked timed_out."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, not {world_size}")
        self.world_size = world_size
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg_timeout, self.grace, self.deadline = pg_timeout, grace, deadline
        self.store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=pg_timeout),
                                   wait_for_workers=False)
        self.generations: list[Generation] = []
        self._ctx = context()

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store = None

    def run(self, target: Callable, args: tuple = (), *, env: dict[int, dict] | None = None,
            kill: Kill | None = None, survivors_grace: float = 0.0) -> Generation:
        """Run one generation: every rank calls ``target(rank, world_size, *args)``.

        `env`: extra environment per rank (e.g. REPLAY_FAILPOINTS for one rank only).
        `kill`: SIGKILL that rank at that moment. `survivors_grace`: seconds the other ranks
        get to end on their own after the first failure (to see how a dead peer surfaces)
        before they are terminated; 0 (torchrun's behaviour) terminates them at once.
        """
        number = len(self.generations)
        gen = Generation(number)
        self.generations.append(gen)
        prefix = f"gen-{number}-{random.getrandbits(32):08x}/"
        procs = []
        for rank in range(self.world_size):
            log = self.logs / f"gen-{number}-rank-{rank}.log"
            err = self.logs / f"gen-{number}-rank-{rank}.error.json"
            proc = self._ctx.Process(
                target=_rank_entry, daemon=True,
                args=(self.store.port, prefix, rank, self.world_size, dict((env or {}).get(rank, {})),
                      self.pg_timeout, str(log), str(err), str(self._joined(number, rank)), target, args))
            procs.append(proc)
        for proc in procs:
            proc.start()
        started = time.monotonic()
        joined = None  # when every rank had joined the group
        terminate_at = None
        while True:
            now = time.monotonic()
            if joined is None and all(self._joined(number, rank).exists() for rank in range(self.world_size)):
                joined = now
            if kill is not None and gen.killed is None and joined is not None and now - joined >= kill.after:
                if procs[kill.rank].exitcode is None:
                    os.kill(procs[kill.rank].pid, signal.SIGKILL)
                    gen.killed, gen.killed_at = kill.rank, time.time()
                else:
                    kill = None  # it ended before its moment: nothing to kill
            for rank, proc in enumerate(procs):
                if proc.exitcode not in (None, 0) and gen.first_failure is None:
                    gen.first_failure, gen.first_failure_at = rank, time.time()
                    terminate_at = now + survivors_grace
            alive = [p for p in procs if p.exitcode is None]
            if not alive:
                break
            if now - started > self.deadline:
                gen.timed_out = True
                terminate_at = min(terminate_at or now, now)
            if terminate_at is not None and now >= terminate_at:
                self._terminate(alive)
                break
            wait = 0.05
            if kill is not None and gen.killed is None and joined is not None:
                wait = max(0.0, min(wait, kill.after - (now - joined)))
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=wait)
        for proc in procs:
            proc.join()
        for rank, proc in enumerate(procs):
            gen.exits.append(self._exit_of(number, rank, proc.exitcode))
        return gen

    def _joined(self, number: int, rank: int) -> Path:
        return self.logs / f"gen-{number}-rank-{rank}.joined"

    def _terminate(self, alive: list) -> None:
        for proc in alive:
            if proc.exitcode is None:
                proc.terminate()
        end = time.monotonic() + self.grace
        for proc in alive:
            proc.join(max(0.0, end - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()

    def _exit_of(self, number: int, rank: int, exitcode: int | None) -> RankExit:
        log = self.logs / f"gen-{number}-rank-{rank}.log"
        err = self.logs / f"gen-{number}-rank-{rank}.error.json"
        try:
            report = json.loads(err.read_text()) if err.exists() else {}
        except ValueError:  # terminated while writing it
            report = {"error": "unreadable error report"}
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        return RankExit(rank, exitcode, report.get("error"), report.get("message"), report.get("ended"), tail)


def elastic(launcher: Launcher, target: Callable, args_of: Callable[[int], tuple], *, max_restarts: int,
            plan: Callable[[int], tuple[Kill | None, dict[int, dict] | None]] = lambda number: (None, None)
            ) -> list[Generation]:
    """torchrun's --max-restarts loop: run generations until one ends cleanly.

    `args_of(number)` gives generation `number`'s target args; `plan(number)` its
    (kill, env). Returns the generations run; AssertionError (with every rank's exit and
    log tail) when a generation times out or `max_restarts` restarts did not finish.
    """
    runs = []
    for number in range(max_restarts + 1):
        kill, env = plan(number)
        gen = launcher.run(target, args_of(number), kill=kill, env=env)
        runs.append(gen)
        assert not gen.timed_out, "a generation hung:\n" + gen.describe()
        if gen.clean:
            return runs
    raise AssertionError(f"no clean generation in {max_restarts} restarts:\n" + runs[-1].describe())
