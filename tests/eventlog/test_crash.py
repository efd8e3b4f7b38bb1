"""SIGKILL a writer at random moments: every acknowledged entry survives, intact, in order.

The child appends and reports each index only after the log acknowledged it (sync:
append returned; group: wait_durable returned). The parent kills it mid-stream, then
checks the log in a fresh open. A lost acknowledged entry, a damaged one, or a broken
chain fails the test.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from eventlog import EventLog

pytestmark = pytest.mark.crash

WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog

    path, mode = sys.argv[1], sys.argv[2]
    log = EventLog.open(path, durability=mode)
    out = sys.stdout
    while True:
        i = log.last_index + 1
        got = log.append("step", {"i": i, "term": log.term, "blob": bytes([i % 256]) * (i % 700)})
        assert got == i
        if mode == "group":
            log.wait_durable(got)
        out.write(f"{got}\\n")
        out.flush()
""")


def expected_payload(entry):
    i = entry.index
    assert entry.payload["i"] == i and entry.payload["term"] == entry.term
    assert entry.payload["blob"] == bytes([i % 256]) * (i % 700)


@pytest.mark.parametrize("mode", ["sync", "group"])
def test_sigkill_never_loses_an_acknowledged_entry(tmp_path, mode):
    path = str(tmp_path / "log")
    rng = random.Random(1234)
    acknowledged = 0
    kills = 0
    for _ in range(22):
        child = subprocess.Popen([sys.executable, "-c", WRITER, path, mode], stdout=subprocess.PIPE,
                                 text=True, bufsize=1)
        deadline = time.monotonic() + rng.uniform(0.02, 0.25)
        # Wait for the child's first acknowledgement so every kill lands mid-stream.
        first = child.stdout.readline()
        assert first, "writer child died before appending"
        acknowledged = max(acknowledged, int(first))
        while time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kills += 1
        for line in child.stdout.read().splitlines():
            if line.strip():
                acknowledged = max(acknowledged, int(line))
        with EventLog.open(path, readonly=True) as log:
            assert log.last_index >= acknowledged, f"acknowledged {acknowledged}, log ends at {log.last_index}"
            entries = list(log.entries())
            assert [e.index for e in entries] == list(range(1, log.last_index + 1))
            for entry in entries:
                expected_payload(entry)
            report = log.verify()
            assert report.ok, str(report)
            assert [t for t, _ in report.terms] == sorted({t for t, _ in report.terms})
    assert kills >= 20 and acknowledged > 20
    with EventLog.open(path) as log:  # a writer after all the kills: term kills+1, appends fine
        assert log.term == kills + 1
        log.append("after", None)
        assert log.verify().ok
