"""Node loss: a journal shipping to a replica is SIGKILLed at a random moment and its whole
directory deleted; a restore from the replica alone, into a new directory, holds every
entry at or below the replica index the child last reported, and the state there equals
an uninterrupted run's, bit for bit.

One child process per cycle (a subprocess: the replica thread and moto's server thread
must not be forked). The child trains a tiny state, flushing and waiting for the replica
after every few entries, and prints the replica index each `wait` returned. Most cycles
ship to a file:// replica; some to S3 (moto on 127.0.0.1). Fresh replica per cycle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.crash, pytest.mark.fault_replica, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CYCLES = 11  # per durability mode: 22 in all


def _child(directory: str, url: str, options: dict, durability: str, seed: int) -> None:
    from tests.replica.test_shipping import apply_n, open_journal, ship

    rng = random.Random(seed)
    journal = open_journal(directory, every=rng.choice([3, 5, 9]), durability=durability)
    shipper = ship(journal, url, options, interval=rng.choice([0.01, 0.05, 0.2]))
    print("ready", flush=True)
    while True:
        apply_n(journal, rng.randint(1, 4))
        if rng.random() < 0.3:
            continue  # some entries settle and ship only on the shipper's own schedule
        journal.flush()
        print(shipper.wait(journal.index, timeout=60), flush=True)


def _run_cycle(tmp_path: Path, cycle: int, url: str, options: dict, durability: str, rng: random.Random) -> int:
    directory = tmp_path / f"run{cycle}"
    proc = subprocess.Popen(
        [sys.executable, __file__, str(directory), url, json.dumps(options), durability, str(rng.randrange(1 << 30))],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    reported: list[int] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            if line.strip() == "ready":
                ready.set()
            elif line.strip().isdigit():
                reported.append(int(line))
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(120), "the child never started"
    time.sleep(rng.choice([rng.uniform(0, 0.05), rng.uniform(0.05, 0.6)]))
    proc.kill()
    proc.wait()
    reader.join(10)
    stderr = proc.stderr.read()
    assert proc.returncode == -9, stderr
    shutil.rmtree(directory)  # the machine is gone, and its disk with it
    last = reported[-1] if reported else 0
    return last


def _check_restore(tmp_path: Path, cycle: int, url: str, options: dict, last: int) -> int:
    from replay.replica.errors import ObjectNotFoundError
    from replay.replica.restore import restore
    from tests.replica.test_shipping import assert_state, open_journal

    target = tmp_path / f"restored{cycle}"
    try:
        report = restore(url, target, options)
    except ObjectNotFoundError:
        assert last == 0, "a replica index was reported but the replica has no head"
        return 0
    assert report.head_index >= last
    with open_journal(target) as journal:
        assert journal.index == report.head_index >= last
        # Every user entry through the head (so through `last`) is applied, once, in order:
        # the count and the state are an uninterrupted run's, bit for bit.
        assert journal.count() == journal.index
        assert_state(journal.state, journal.index)
        # The restored log holds the entries after its snapshot; those up to `last` are there.
        first = journal.log.first_index
        entries = list(journal.log.entries(first, last + 1)) if first <= last else []
        assert [e.index for e in entries] == list(range(first, last + 1)) if first <= last else entries == []
    return report.head_index


@pytest.mark.parametrize("durability", ["group", "sync"])
def test_node_loss_restores_every_replicated_entry(tmp_path, durability, request):
    rng = random.Random(f"replica-node-loss-{durability}")
    restored = []
    for cycle in range(CYCLES):
        if cycle % 4 == 3:
            endpoint = request.getfixturevalue("s3_endpoint")
            url, options = f"s3://{endpoint.new_bucket()}/run", endpoint.options()
        else:
            url, options = (tmp_path / f"replica{cycle}").as_uri(), {}
        last = _run_cycle(tmp_path, cycle, url, options, durability, rng)
        restored.append((last, _check_restore(tmp_path, cycle, url, options, last)))
    assert len(restored) == CYCLES
    # The kills must land after real shipping, not only before the first head.
    assert sum(1 for last, _ in restored if last > 0) >= CYCLES // 2, restored


@pytest.fixture(scope="session")
def s3_endpoint():
    from tests.replica.conftest import ThreadedMotoServer, MotoEndpoint, NO_MOTO
    if ThreadedMotoServer is None:
        pytest.skip(NO_MOTO)
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    endpoint = MotoEndpoint().start()
    yield endpoint
    endpoint.stop()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
