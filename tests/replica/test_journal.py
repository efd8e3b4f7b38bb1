"""Journal.open(replica=...): ship while training, lose the machine, open on an empty directory, go on.

Runs against a directory replica and a real S3 endpoint (moto on 127.0.0.1). The state
after the automatic restore is compared bit for bit with the run that wrote the replica,
and the resumed run with one that never stopped.
"""

from __future__ import annotations

import shutil

import pytest

import replay
from replay.replica.errors import ReplicaFencedError, ReplicaUnavailableError
from replay.replica.status import ReplicaLagError

from ..replay.models import assert_same, make_ops, make_state

pytestmark = pytest.mark.timeout(120)


def train(journal, steps):
    for step in range(journal.count(), steps):
        journal.apply("train_step", ids=journal.state["data"].peek(4), seed=step)


def test_a_new_machine_opens_the_replica_and_goes_on_bit_identically(tmp_path, replica_url):
    url, options = replica_url
    reference = make_state()
    with replay.Journal.open(tmp_path / "reference", state=reference, ops=make_ops()) as plain:
        train(plain, 30)

    lost = make_state()
    journal = replay.Journal.open(tmp_path / "machine-a", state=lost, ops=make_ops(), replica=url,
                                  replica_options=options, ship_interval=0.05, snapshot=replay.Every(entries=8))
    assert journal.recovery.restored is None  # a new replica: nothing to restore
    train(journal, 18)
    journal.flush(replica=True, timeout=60)
    assert journal.replica_index == journal.index
    status = journal.replica_status
    assert (status.lag_entries, status.fenced, status.error) == (0, False, None) and status.uploads > 0
    acknowledged = journal.replica_index
    journal.abandon()
    shutil.rmtree(tmp_path / "machine-a")  # the machine is gone, its disk with it

    state = make_state(seed=9)  # built differently: the replica decides the bytes
    with replay.Journal.open(tmp_path / "machine-b", state=state, ops=make_ops(), replica=url,
                             replica_options=options, ship_interval=0.05) as journal:
        assert journal.recovery.restored is not None
        assert journal.recovery.restored.head_index == acknowledged
        assert journal.index == acknowledged and journal.count() == 18
        assert_same(state, lost)
        train(journal, 30)
        journal.flush(replica=True, timeout=60)
    assert_same(state, reference)


def test_flush_replica_needs_a_replica(tmp_path):
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops()) as journal:
        assert journal.replica_index is None and journal.replica_status is None
        with pytest.raises(ValueError, match="replica"):
            journal.flush(replica=True)


def test_an_unreachable_replica_never_stops_training_and_max_lag_turns_it_into_an_error(tmp_path,
                                                                                        dead_s3_options):
    url = "s3://nowhere/run"
    for name in ("a", "b"):  # journals that exist: an empty directory would need the replica to restore
        replay.Journal.open(tmp_path / name, state=make_state(), ops=make_ops()).close()
    with pytest.warns(RuntimeWarning, match="claim is retried"):  # opened all the same
        journal = replay.Journal.open(tmp_path / "a", state=make_state(), ops=make_ops(), replica=url,
                                      replica_options=dead_s3_options, ship_interval=0.05)
    with journal:
        train(journal, 5)
        assert journal.flush() == journal.index  # local durability is unchanged
        with pytest.raises(TimeoutError):
            journal.flush(replica=True, timeout=0.5)
        status = journal.replica_status
        assert status.index == 0 and status.lag_entries == 5 and "unavailable" in status.last_error
        journal.close(snapshot=False)

    with pytest.warns(RuntimeWarning, match="claim is retried"):
        journal = replay.Journal.open(tmp_path / "b", state=make_state(), ops=make_ops(), replica=url,
                                      replica_options=dead_s3_options, ship_interval=0.05, max_replica_lag=0.2)
    with journal:
        deadline_steps = 0
        # Refused from whichever apply finds the lag over max_lag: on a loaded machine one
        # train step can outlast 0.2 s, so even the second entry may be refused.
        with pytest.raises(ReplicaLagError, match="behind"):
            while deadline_steps < 10_000:
                train(journal, journal.count() + 1)
                deadline_steps += 1
        count = journal.count()
        assert count >= 1  # a lag needs a settled entry
        assert [e.index for e in journal.log.entries()][-1] == journal.index  # nothing appended by the refusal
        assert journal.count() == count
        journal.close(snapshot=False)


def test_restoring_from_an_unreachable_replica_is_an_error_not_a_new_journal(tmp_path, dead_s3_options):
    with pytest.raises(ReplicaUnavailableError):
        replay.Journal.open(tmp_path / "empty", state=make_state(), ops=make_ops(), replica="s3://nowhere/run",
                            replica_options=dead_s3_options)
    assert not (tmp_path / "empty" / "log").exists()


def test_the_original_writer_is_fenced_once_a_restore_takes_over(tmp_path, replica_url):
    url, options = replica_url
    original = replay.Journal.open(tmp_path / "a", state=make_state(), ops=make_ops(), replica=url,
                                   replica_options=options, ship_interval=0.05)
    train(original, 6)
    original.flush(replica=True, timeout=60)
    with replay.Journal.open(tmp_path / "b", state=make_state(), ops=make_ops(), replica=url,
                             replica_options=options, ship_interval=0.05) as restored:
        train(restored, 9)
        restored.flush(replica=True, timeout=60)
        train(original, 7)  # its shipper has not written since the takeover: this one entry appends...
        with pytest.raises(ReplicaFencedError):
            original.flush(replica=True, timeout=60)  # ...but can no longer ship
        assert original.replica_status.fenced
        with pytest.raises(ReplicaFencedError, match="nothing appended"):
            train(original, 8)  # and the stale original stops: never a silent fork
        assert original.count() == 7
    original.close()


def test_a_multirank_journal_replicates_each_rank_under_its_own_prefix(tmp_path, replica_url):
    """World size 1 runs the group path: rank 0's directory ships under URL/rank-0 and a
    new machine's empty directory comes back from there."""
    import datetime

    import torch.distributed as dist

    url, options = replica_url
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        state = make_state()
        with replay.Journal.open(tmp_path / "a", state=state, ops=make_ops(), group=dist.group.WORLD, replica=url,
                                 replica_options=options, ship_interval=0.05) as journal:
            train(journal, 7)
            journal.flush(replica=True, timeout=60)
        restored = make_state(seed=4)
        with replay.Journal.open(tmp_path / "b", state=restored, ops=make_ops(), group=dist.group.WORLD,
                                 replica=url, replica_options=options) as journal:
            assert journal.recovery.restored is not None and journal.count() == 7
            assert_same(restored, state)
        assert (tmp_path / "b" / "rank-0" / "rank.json").exists()
    finally:
        dist.destroy_process_group()
    from replay.replica.objects import open_store

    with open_store(url, options) as store:
        assert store.list("rank-0/head.json") == ["rank-0/head.json"] and store.list("head.json") == []


@pytest.mark.parametrize("extra", [0, 1])
def test_the_replica_keeps_what_local_retention_keeps_plus_replica_keep_extra(tmp_path, replica_url, extra):
    from replay.replica.objects import open_store

    url, options = replica_url
    with replay.Journal.open(tmp_path / "a", state=make_state(), ops=make_ops(), replica=url, keep_last=2,
                             replica_options=options, ship_interval=0.05, replica_keep_extra=extra,
                             snapshot=replay.Every(entries=4), async_snapshots=False) as journal:
        # Waiting for the replica every 2 steps ships every snapshot before local retention
        # (keep_last=2) prunes it: the replica then holds more than it keeps, whatever the load.
        for steps in range(2, 31, 2):
            train(journal, steps)
            journal.flush(replica=True, timeout=60)
        collected = journal._replica.collect(60)  # a sweep now instead of the default once a minute
        local = {f"manifests/{info.manifest_id}" for info in journal.snapshots.list()}
        assert journal.replica_status.collected == collected and collected.manifests > 0
        with open_store(url, options) as store:
            shipped = set(store.list("manifests/"))
    assert local <= shipped and len(shipped) == len(local) + extra
