"""A preemption stops within its grace even when the replica cannot be reached.

The trainer is a child process with `Preemption(grace=2)` shipping to an S3 endpoint that
never answers: a black hole (a socket that listens and never accepts, so every request
waits for its timeout) or a closed port (connection refused). On SIGTERM the journal must
snapshot, flush, give the replica's last round only what is left of the grace, close and
exit with 128 + SIGTERM through its clean path (atexit runs; the grace timer's forced exit
never fires), and every entry it acknowledged must be in the local journal.

The parent waits for the child's lines (events), never for time; the only bound on time
is the contract itself ("within grace"), with a generous margin.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from .conftest import free_port
from .test_shipping import open_journal

pytestmark = pytest.mark.timeout(240)

GRACE = 2.0
MARGIN = 5.0  # seconds beyond the grace the whole stop may take on a loaded machine

CHILD = textwrap.dedent("""
    import atexit, json, sys
    sys.path[:0] = json.loads(sys.argv[3])
    import replay
    from tests.replica.test_shipping import apply_n, open_journal

    atexit.register(lambda: print("atexit: closed cleanly", flush=True))
    options = {"endpoint_url": sys.argv[2], "region": "us-east-1", "access_key_id": "x",
               "secret_access_key": "x", "connect_timeout": 1.0, "request_timeout": 2.0, "max_retries": 1}
    journal = open_journal(sys.argv[1], replica="s3://bucket/run", replica_options=options, ship_interval=0.05,
                           preemption=replay.Preemption(grace=%r))
    while True:
        apply_n(journal, 10)
        print("acknowledged", journal.flush(), flush=True)
""" % GRACE)


@pytest.fixture(params=["black-hole", "closed-port"])
def unreachable(request):
    """The endpoint URL of an S3 server that never answers."""
    if request.param == "closed-port":
        yield f"http://127.0.0.1:{free_port()}"
        return
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(128)  # connections complete in the kernel and are never accepted: requests time out
    yield f"http://127.0.0.1:{hole.getsockname()[1]}"
    hole.close()


def test_preemption_exits_within_its_grace_when_the_replica_is_unreachable(tmp_path, unreachable):
    import json

    directory = tmp_path / "run"
    open_journal(directory).close()  # an existing journal: an empty one would need the replica to restore
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(directory), unreachable, json.dumps(sys.path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        for line in child.stdout:
            if line.startswith("acknowledged"):
                acknowledged.append(int(line.split()[1]))
                if len(acknowledged) == 3:
                    break
        assert len(acknowledged) == 3, child.stderr.read()
        signalled = time.monotonic()
        child.send_signal(signal.SIGTERM)
        rest, errors = child.communicate(timeout=120)
        elapsed = time.monotonic() - signalled
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    acknowledged += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("acknowledged")]
    assert child.returncode == 128 + signal.SIGTERM, errors
    assert "expired" not in errors, errors                  # the clean stop, not the grace timer's forced exit
    assert "atexit: closed cleanly" in rest, (rest, errors)
    assert elapsed < GRACE + MARGIN, (elapsed, errors)
    with open_journal(directory) as journal:                # every acknowledged entry is durable locally
        assert journal.index >= max(acknowledged)
        assert journal.recovery.entries_replayed == 0       # the stop's snapshot at the last index committed


def test_the_last_round_gets_what_is_left_of_a_deadline_never_more():
    from replay.replica.link import CLOSE_RESERVE, CLOSE_TIMEOUT, final_round_timeout

    assert final_round_timeout(None, None, now=100.0) == CLOSE_TIMEOUT          # a plain close
    assert final_round_timeout(110.0, 10.0, now=100.0) == 10.0 - CLOSE_RESERVE  # what is left, less the reserve
    assert final_round_timeout(102.0, 2.0, now=100.0) == pytest.approx(2.0 - 0.2 * 2.0)  # a fifth of a short grace
    assert final_round_timeout(101.0, 30.0, now=100.0) == 0.0                   # nothing left: no wait at all
    assert final_round_timeout(400.0, 300.0, now=100.0) == CLOSE_TIMEOUT        # a long grace: never more than a close
