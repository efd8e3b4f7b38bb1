"""Node loss: a journal shipping to a replica is SIGKILLed at a random moment and its whole
directory deleted; a restore from the replica alone, into a new directory, holds every
entry at or below the replica index the child last reported, and the state there equals
an uninterrupted run's, bit for bit.

One child process per cycle, forked from a fork server that has imported torch and the
packages once (the test process itself is never forked: moto's server thread and the
replica threads live there). The child trains a tiny state, flushing and waiting for the replica
after every few entries, and prints the replica index each `wait` returned. Most cycles
ship to a file:// replica; some to S3 (moto on 127.0.0.1). Fresh replica per cycle.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import sys
import time
from pathlib import Path

import pytest

# The moto endpoint fixture of tests/replica (its conftest is not visible from here).
from tests.replica.conftest import s3_endpoint  # noqa: E402,F401

pytestmark = [pytest.mark.crash, pytest.mark.fault_replica, pytest.mark.timeout(300)]

CYCLES = 11  # per durability mode: 22 in all


def _child(directory: str, url: str, options: dict, durability: str, seed: int, report) -> None:
    """Train and ship forever; `report("ready")`, then every replica index a `wait` returned."""
    import torch

    from tests.replica.test_shipping import apply_n, open_journal, ship

    torch.set_num_threads(1)
    rng = random.Random(seed)
    journal = open_journal(directory, every=rng.choice([3, 5, 9]), durability=durability)
    shipper = ship(journal, url, options, interval=rng.choice([0.01, 0.05, 0.2]))
    report("ready")
    while True:
        apply_n(journal, rng.randint(1, 4))
        if rng.random() < 0.3:
            continue  # some entries settle and ship only on the shipper's own schedule
        journal.flush()
        report(shipper.wait(journal.index, timeout=60))


def _forked_child(conn, *args) -> None:
    _child(*args, report=conn.send)


def _fork_server():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "eventlog", "snapshots", "replay", "tests.replica.test_shipping"])
    return context


def _run_cycle(tmp_path: Path, cycle: int, url: str, options: dict, durability: str, rng: random.Random,
               after_shipping: bool) -> int:
    """One child, SIGKILLed at a random moment; with `after_shipping`, a random moment after the
    child reported a replica index above 0 (an event, never a guess at how long shipping takes)."""
    directory = tmp_path / f"run{cycle}"
    context = _fork_server()
    receiver, sender = context.Pipe(duplex=False)
    proc = context.Process(target=_forked_child, args=(sender, str(directory), url, options, durability,
                                                       rng.randrange(1 << 30)))
    proc.start()
    sender.close()
    reported: list[int] = []

    def read_until(deadline: float, done=lambda: False) -> bool:
        """Collect what the child sent until `deadline`, "ready", or `done()`; False once it is gone."""
        while not done() and time.monotonic() < deadline:
            if not receiver.poll(max(0.0, deadline - time.monotonic())):
                return True
            try:
                message = receiver.recv()
            except EOFError:
                return False
            if message == "ready":
                return True
            reported.append(message)
        return True

    # Generous deadlines: they only bound a broken child (the test's timeout dumps stacks).
    assert read_until(time.monotonic() + 120) and proc.is_alive(), "the child never started"
    if after_shipping:
        assert read_until(time.monotonic() + 120, lambda: bool(reported) and reported[-1] > 0), \
            f"the child died before it reported a replica index (exit {proc.exitcode})"
        assert reported and reported[-1] > 0, "no replica index above 0 reported in 120 s"
    read_until(time.monotonic() + rng.choice([rng.uniform(0, 0.05), rng.uniform(0.05, 0.6)]))
    proc.kill()
    proc.join()
    while receiver.poll():  # what it sent before the kill
        try:
            reported.append(receiver.recv())
        except EOFError:
            break
    receiver.close()
    assert proc.exitcode == -9, proc.exitcode
    shutil.rmtree(directory)  # the machine is gone, and its disk with it
    return reported[-1] if reported else 0


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
    # Every other cycle is killed only after the child reported a replica index above 0, so the
    # kills land after real shipping in at least CYCLES // 2 + 1 cycles by construction; the
    # others may land anywhere, before the first head included.
    for cycle in range(CYCLES):
        if cycle % 4 == 3:
            endpoint = request.getfixturevalue("s3_endpoint")
            url, options = f"s3://{endpoint.new_bucket()}/run", endpoint.options()
        else:
            url, options = (tmp_path / f"replica{cycle}").as_uri(), {}
        last = _run_cycle(tmp_path, cycle, url, options, durability, rng, after_shipping=cycle % 2 == 0)
        restored.append((last, _check_restore(tmp_path, cycle, url, options, last)))
    assert len(restored) == CYCLES
    # The kills landed after real shipping, not only before the first head.
    assert sum(1 for last, _ in restored if last > 0) >= CYCLES // 2 + 1, restored


if __name__ == "__main__":  # by hand: python -m tests.crash.test_replica_node_loss DIR URL OPTIONS DURABILITY SEED
    _child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
           report=lambda message: print(message, flush=True))
