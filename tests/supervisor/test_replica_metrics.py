"""Replica lag in ``replay run --metrics`` (replay/supervisor/replica_status.py, metrics.py): the
journal publishes its replica's status under DIR/supervisor/, the supervisor turns it into
gauges without opening the replica; a job whose machine is lost restores from its replica
under ``replay run`` (DIR then holds only the supervisor's records) and keeps them."""

from __future__ import annotations

import json
import re
import shutil
import threading
from types import SimpleNamespace

import pytest

from replay.supervisor import replica_status
from replay.supervisor.metrics import MetricsFile

from .test_run import attempts, final, reference, supervise

pytestmark = [pytest.mark.timeout(240)]


def status(index=10, settled=15, lag_entries=5, lag_seconds=2.5, fenced=False):
    return SimpleNamespace(url="file:///r", index=index, settled=settled, lag_entries=lag_entries,
                           lag_seconds=lag_seconds, fenced=fenced, last_error=None)


def values(path) -> dict[str, float]:
    lines = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, value in lines}


def test_the_status_file_round_trips_and_hostile_files_read_as_none(tmp_path):
    path = tmp_path / "replica-a1-p1.json"
    published = threading.Event()
    current = [status()]

    def source():
        published.set()
        return current[0]

    writer = replica_status.ReplicaStatusWriter(path, source, every=0.05)
    assert published.wait(10)
    current[0] = status(index=15, lag_entries=0, lag_seconds=0.0)
    writer.close()  # publishes the final status
    got = replica_status.read(path)
    assert (got["index"], got["settled"], got["lag_entries"], got["fenced"]) == (15, 15, 0, False)
    for hostile in (b"", b"[]", b'{"format": 2}', json.dumps({**got, "index": -1}).encode(),
                    json.dumps({**got, "lag_seconds": "1"}).encode(), b"x" * 20000):
        path.write_bytes(hostile)
        assert replica_status.read(path) is None
    assert replica_status.read(tmp_path / "missing") is None


def test_metrics_show_replica_lag_only_where_a_replica_publishes(tmp_path):
    prom = tmp_path / "m.prom"
    metrics = MetricsFile(prom)
    metrics.update(index=3, running=True, force=True, replica=[])
    assert not [k for k in values(prom) if "replica" in k]
    rank0 = {"format": 1, "pid": 1, "time": 0.0, "url": "u", "index": 12, "settled": 12, "lag_entries": 0,
             "lag_seconds": 0.0, "fenced": False, "last_error": None}
    rank1 = {**rank0, "pid": 2, "index": 9, "lag_entries": 3, "lag_seconds": 1.5}
    import time

    rank1["time"] = time.time()
    metrics.update(index=12, running=True, force=True, replica=[rank0, rank1])
    got = values(prom)
    assert got["replay_run_replica_lag_entries"] == 3 and got["replay_run_replica_index"] == 9
    assert 1.5 <= got["replay_run_replica_lag_seconds"] < 60 and got["replay_run_replica_fenced"] == 0
    metrics.update(index=12, running=False, force=True, replica=None)  # between attempts: the last values stay
    assert values(prom)["replay_run_replica_index"] == 9


@pytest.mark.crash
def test_replay_run_reports_replica_lag_and_a_lost_machine_restores_under_it(tmp_path):
    replica = tmp_path / "replica"
    replica.mkdir()
    url = f"file://{replica}"
    prom = tmp_path / "m.prom"
    journal = tmp_path / "j"
    run = supervise(journal, 12, "--kill", "1:5", "--replica", url, "--step-seconds", "0.05",
                    options=("--metrics", prom))
    assert run.returncode == 0, run.stderr
    assert final(journal) == reference(12)
    got = values(prom)
    # The job closed cleanly: its last shipping round put everything on the replica.
    assert got["replay_run_replica_lag_entries"] == 0 and got["replay_run_replica_fenced"] == 0
    assert got["replay_run_replica_index"] >= 12 and got["replay_run_replica_lag_seconds"] == 0

    shutil.rmtree(journal)  # the machine is lost; `replay run` on a new one restores from the replica
    run = supervise(journal, 20, "--replica", url)
    assert run.returncode == 0, run.stderr
    opened_at = re.search(r"job: replayed \d+ from index (\d+)", run.stdout)
    assert opened_at is not None and int(opened_at.group(1)) >= 12, run.stdout  # restored, not started over
    assert final(journal) == reference(20)
    assert [a["class"] for a in attempts(journal)] == ["finished"]  # the records moved into the restore
