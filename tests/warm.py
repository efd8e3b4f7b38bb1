"""`python -m replay ARGS` and `python SCRIPT` in a fresh child process that starts warm.

An interpreter that imports torch costs about 2 CPU-seconds on the CI machine, and the
CLI tests run a few hundred commands: that alone was a fifth of the suite. So each
command runs in a child forked from multiprocessing's fork server, which imported torch
and replay once per test process. The child is otherwise what ``python -m replay ARGS``
is: its own process, with the given working directory first on ``sys.path`` (so
``--ops tests.cli.tinyjob:ops`` is imported there, for the first time), its own
environment, stdin from /dev/null, stdout and stderr of its own, and its exit status as
the interpreter would give it (SystemExit's code; an uncaught exception prints its
traceback and exits 1). What it does not repeat is the interpreter's start and those
imports, which the tests that need them (the entry point, ``--help`` from a real
``python -m replay``, user modules that must not be imported) still get from a real
subprocess. `run_script` does the same for a program file (the README's recipes): its
directory first on ``sys.path``, ``sys.argv[0]`` and ``__file__`` its path, run as
``__main__``.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["torch", "replay", "replay.__main__"]


def run_replay(args, cwd: Path | str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """`replay ARGS` run in `cwd` as above; a CompletedProcess with text stdout and stderr.

    A child still running after `timeout` seconds is killed (returncode -9) and
    subprocess.TimeoutExpired raised, as subprocess.run does."""
    return _run(None, [str(a) for a in args], cwd, timeout, env)


def run_script(script: Path | str, cwd: Path | str, timeout: float = 60,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python SCRIPT` run in `cwd` as above (no arguments); as `run_replay` otherwise."""
    return _run(str(Path(script).resolve()), [], cwd, timeout, env)


def _run(script: str | None, argv: list[str], cwd, timeout: float, env: dict | None) -> subprocess.CompletedProcess:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # ignored when this process's fork server already runs
    command = ["python", script] if script is not None else ["replay", *argv]
    with tempfile.TemporaryDirectory(prefix="replay-cli-") as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        child = context.Process(target=_child, args=(script, argv, str(cwd), dict(os.environ if env is None else env),
                                                     str(out), str(err)), daemon=False)
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(command, child.exitcode, _text(out), _text(err))


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace") if path.exists() else ""


def _child(script: str | None, argv: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # What a fresh interpreter's sys.path starts with: `python -m`'s working directory (or
    # the script's own directory), then the environment's PYTHONPATH.
    first = cwd if script is None else str(Path(script).parent)
    sys.path[:0] = [first, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    sys.argv = [str(Path(cwd, "replay", "__main__.py")) if script is None else script, *argv]
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    code = 1
    try:
        if script is not None:
            import runpy

            runpy.run_path(script, run_name="__main__")
            code = 0
        else:
            from replay.__main__ import main

            code = _status(main(argv))
    except SystemExit as stop:
        code = _status(stop.code)
    except BaseException:  # noqa: BLE001 - as the interpreter does with an uncaught exception
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _status(code) -> int:
    """The exit status `sys.exit(code)` gives: None is 0, an int itself, anything else printed and 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1
