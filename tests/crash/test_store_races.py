"""Row 10 (snapshot store): a reader never concludes "no snapshot" while one exists
(snapshots/FORMAT.md: READERS, the shared lock a listing is taken under).

A writer process saves and prunes in a loop with keep_last=1, so every manifest a
reader lists is deleted soon after a newer one commits. A reader process, run under
strace with every flock() delayed on entry (the moment between listing manifests and
taking the reader lock, widened from microseconds to the writer's whole save+prune),
calls latest() and load_latest() in a loop: each must return a snapshot.

Run directly (`python test_store_races.py reader ROOT CALLS`) it is that reader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # on the reader's PYTHONPATH (see _child_env)

import pytest  # noqa: E402
import torch  # noqa: E402

import snapshots  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.fault_race]

FLOCK_DELAY_US = 30_000


def _state(i: int) -> dict:
    return {"w": torch.full((256,), float(i)), "step": i}


def _writer(root: str, stop: str, out_fd: int) -> None:
    """Save index 2, 3, ... and prune after each, until `stop` exists; report the count."""
    saved = 0
    with snapshots.SnapshotStore(root, keep_last=1, chunk_size=4096, workers=2) as store:
        i = 1
        while not os.path.exists(stop):
            i += 1
            store.save(_state(i), index=i, term=1)
            store.prune()
            saved += 1
    os.write(out_fd, json.dumps({"saved": saved, "last": i}).encode())


def _reader(root: str, calls: int) -> dict:
    nones, seen = [], []
    with snapshots.SnapshotStore(root, workers=2) as store:
        for k in range(calls):
            if k % 2:
                info, state, skipped = store.load_latest()
                if info is not None:
                    assert state["step"] == info.index and float(state["w"][0]) == info.index
            else:
                info, skipped = store.latest_verified()
            if info is None:
                nones.append([k, [str(r) for r in skipped]])
            else:
                seen.append(info.index)
    return {"calls": calls, "nones": nones, "seen": seen}


def _child_env() -> dict:
    path = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _fork_writer(root: str, stop: str):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            _writer(root, stop, w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


@pytest.mark.timeout(240)
def test_reader_never_sees_no_snapshot_while_a_writer_saves_and_prunes(tmp_path, strace):
    root, stop = str(tmp_path / "snap"), str(tmp_path / "stop")
    with snapshots.SnapshotStore(root, chunk_size=4096, workers=2) as store:
        store.save(_state(1), index=1, term=1)  # the first snapshot exists before any read
    pid, r = _fork_writer(root, stop)
    try:
        calls = 60
        cmd = [strace, "-f", "-qq", "-o", "/dev/null", "--seccomp-bpf", "-e", "trace=flock",
               "-e", f"inject=flock:delay_enter={FLOCK_DELAY_US}",
               sys.executable, __file__, "reader", root, str(calls)]
        reader = subprocess.run(cmd, capture_output=True, timeout=200, env=_child_env())
    finally:
        Path(stop).touch()
        data = bytearray()
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert reader.returncode == 0, reader.stderr.decode()[-3000:]
    assert status == 0, "the writer failed"
    result, wrote = json.loads(reader.stdout), json.loads(bytes(data))
    assert result["calls"] == calls
    assert result["nones"] == [], f"'no snapshot' {len(result['nones'])} times of {calls}: {result['nones'][:3]}"
    assert len(set(result["seen"])) >= 3, result["seen"]  # the writer really raced the reader
    assert wrote["saved"] >= 5, wrote
    print(f"row 10 store race: {calls} reads, {wrote['saved']} saves+prunes, "
          f"{len(set(result['seen']))} distinct snapshots seen, 0 'no snapshot'")


if __name__ == "__main__":
    if sys.argv[1] == "reader":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        print(json.dumps(_reader(sys.argv[2], int(sys.argv[3]))))
