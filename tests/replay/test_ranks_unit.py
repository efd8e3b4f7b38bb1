"""Multi-rank journals in one process: the on-disk records, the refusals, and the group code path at world size 1.

A gloo group of one rank runs every collective of the multi-rank path (the exchange, the
agreements, the global flush, snapshot confirmation, the global records) without a second
process; what needs two or more ranks (a cut below some rank's log, a common snapshot
different from one rank's newest, lockstep replay of DDP) is in tests/distributed/.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist

import replay
from replay.ranks import layout
from replay.ranks.collectives import Collectives

from .models import assert_same, make_ops, make_state

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def group():
    """The default process group: gloo, one rank, in this process."""
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=30))
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def train(journal, steps):
    for step in range(journal.count(), steps):
        journal.apply("train_step", ids=journal.state["data"].peek(4), seed=step)


# ---------------------------------------------------------------- records on disk

def test_rank_record_round_trips(tmp_path):
    layout.write_rank_record(tmp_path, 1, 3)
    assert layout.read_rank_record(tmp_path) == {"rank": 1, "world_size": 3}
    assert layout.read_rank_record(tmp_path / "missing") is None


@pytest.mark.parametrize("content, reason", [
    (b"not json", "not JSON"),
    (json.dumps({"format": 1, "rank": 3, "world_size": 2}).encode(), "not a rank of a group"),
    (json.dumps({"format": 1, "rank": True, "world_size": 2}).encode(), "not a rank of a group"),
    (json.dumps({"format": 9, "rank": 0, "world_size": 2}).encode(), "not a format-1"),
    (json.dumps([0, 2]).encode(), "not a format-1"),
    (b'{"format": 1, "rank": 0, "rank": 1, "world_size": 2}', "appears twice"),
    (b" " * (layout.RECORD_LIMIT + 1), "larger than"),
])
def test_damaged_rank_record_is_named_damage(tmp_path, content, reason):
    (tmp_path / layout.RANK_FILE).write_bytes(content)
    with pytest.raises(layout.RankRecordError, match=reason) as caught:
        layout.read_rank_record(tmp_path)
    assert str(tmp_path / layout.RANK_FILE) in str(caught.value)


def test_rank_record_that_is_a_link_or_fifo_is_refused_without_blocking(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"format": 1, "rank": 0, "world_size": 2}))
    (tmp_path / "a").mkdir()
    os.symlink(target, tmp_path / "a" / layout.RANK_FILE)
    with pytest.raises(layout.RankRecordError, match="cannot be opened"):
        layout.read_rank_record(tmp_path / "a")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / layout.RANK_FILE)
    with pytest.raises(layout.RankRecordError, match="not a regular file"):
        layout.read_rank_record(tmp_path / "b")


def test_global_records_list_sound_ones_and_name_damaged_ones(tmp_path):
    layout.write_global_record(tmp_path, 7, ["7-1", "7-2"])
    layout.write_global_record(tmp_path, 12, ["12-1", "12-2"])
    directory = tmp_path / layout.GROUP_DIR / "snapshots"
    (directory / f"{30:020d}.json").write_text(json.dumps({"format": 1, "index": 31, "world_size": 1,
                                                           "manifests": ["x"], "time": 0}))
    (directory / f"{40:020d}.json").write_text(json.dumps({"format": 1, "index": 40, "world_size": 2,
                                                           "manifests": ["x"], "time": 0}))
    (directory / ".00000000000000000050.json.1.tmp").write_text("torn")
    records, damaged = layout.read_global_records(tmp_path)
    assert [(r.index, r.manifests) for r in records] == [(7, ("7-1", "7-2")), (12, ("12-1", "12-2"))]
    assert sorted((p.name, "name" in why or "per rank" in why) for p, why in damaged) == [
        (f"{30:020d}.json", True), (f"{40:020d}.json", True)]
    layout.remove_global_records(tmp_path, keep={12})
    assert [r.index for r in layout.read_global_records(tmp_path)[0]] == [12]


def test_ranks_on_disk_ignores_other_names(tmp_path):
    for name in ("rank-0", "rank-2", "rank-01", "rank-x", "group"):
        (tmp_path / name).mkdir()
    (tmp_path / "rank-3").write_text("a file, not a rank")
    assert layout.ranks_on_disk(tmp_path) == [0, 2]
    assert layout.is_multirank(tmp_path) and not layout.is_multirank(tmp_path / "group")


# ---------------------------------------------------------------- refusals

def test_single_process_open_of_a_multirank_dir_is_refused(tmp_path):
    (tmp_path / "rank-0").mkdir()
    layout.write_rank_record(tmp_path / "rank-0", 0, 2)
    with pytest.raises(replay.RecoveryError, match="multi-rank journal"):
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops())
    with pytest.raises(replay.RecoveryError, match="one rank's directory"):
        replay.Journal.open(tmp_path / "rank-0", state=make_state(), ops=make_ops())
    assert sorted(p.name for p in (tmp_path / "rank-0").iterdir()) == [layout.RANK_FILE]


def test_group_open_of_a_single_process_journal_is_refused(tmp_path, group):
    replay.Journal.open(tmp_path, state=make_state(), ops=make_ops()).close()
    with pytest.raises(replay.RecoveryError, match="single-process journal"):
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group)
    assert not layout.is_multirank(tmp_path)


def test_other_world_size_is_refused_naming_both_sizes(tmp_path, group):
    (tmp_path / "rank-0").mkdir()
    layout.write_rank_record(tmp_path / "rank-0", 0, 2)
    with pytest.raises(replay.WorldSizeError, match="group of 2 ranks but this group has 1") as caught:
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group)
    assert (caught.value.recorded, caught.value.current) == (2, 1)
    assert sorted(p.name for p in (tmp_path / "rank-0").iterdir()) == [layout.RANK_FILE]


def test_preemption_with_a_group_is_refused(tmp_path, group):
    with pytest.raises(ValueError, match="preemption"):
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group,
                            preemption=replay.Preemption())


def test_replicated_names_must_be_components(tmp_path, group):
    with pytest.raises(ValueError, match="not components"):
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group, replicated=["modle"])


# ---------------------------------------------------------------- the group path, one rank

def test_group_journal_resumes_bit_exactly_and_records_its_snapshots(tmp_path, group):
    reference = make_state()
    with replay.Journal.open(tmp_path / "ref", state=reference, ops=make_ops()) as plain:
        train(plain, 30)

    state = make_state()
    journal = replay.Journal.open(tmp_path / "run", state=state, ops=make_ops(), group=group,
                                  snapshot=replay.Every(entries=8), digest_every=5, replicated=["model"])
    assert (journal.rank, journal.world_size) == (0, 1)
    train(journal, 17)
    assert journal.flush() == journal.index
    journal.abandon()  # a crash: no final snapshot, no confirmation

    state = make_state(seed=5)
    with replay.Journal.open(tmp_path / "run", state=state, ops=make_ops(), group=group,
                             snapshot=replay.Every(entries=8), digest_every=5, replicated=["model"]) as journal:
        assert journal.recovery.cut == journal.recovery.replayed.stop - 1
        assert journal.recovery.truncated == []
        assert journal.count() == 17
        train(journal, 30)
    assert_same(state, reference)
    rank0 = tmp_path / "run" / "rank-0"
    assert layout.read_rank_record(rank0) == {"rank": 0, "world_size": 1}
    records, damaged = layout.read_global_records(tmp_path / "run")
    assert damaged == [] and records
    manifests = set(os.listdir(rank0 / "snapshots" / "manifests"))
    assert all(r.manifests[0] in manifests for r in records)
    assert records[-1].index == max(int(m.split("-")[0]) for m in manifests)


def test_size_bounded_policy_is_decided_across_ranks_every_16_indexes(tmp_path, group, monkeypatch):
    from replay.ranks.coordinator import DECIDE_EVERY

    asked = []
    original = Collectives.gather

    def gather(self, values, what):
        if what == "the snapshot policy":
            asked.append(values[0])
        return original(self, values, what)

    monkeypatch.setattr(Collectives, "gather", gather)
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group,
                             snapshot=replay.Every(log_bytes=1), snapshot_on_close=False, async_snapshots=False) as journal:
        train(journal, 2 * DECIDE_EVERY + 3)
        journal.flush()
        taken = sorted(i.index for i in journal.snapshots.list())
    assert asked == [1, 1]  # at indexes 16 and 32 only, each time due
    assert taken[-2:] == [DECIDE_EVERY, 2 * DECIDE_EVERY]


def test_entries_bound_decides_without_a_collective(tmp_path, group, monkeypatch):
    asked = []
    original = Collectives.gather
    monkeypatch.setattr(Collectives, "gather",
                        lambda self, values, what: (asked.append(what), original(self, values, what))[1])
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group,
                             snapshot=replay.Every(entries=5), snapshot_on_close=False, async_snapshots=False) as journal:
        asked.clear()
        train(journal, 12)
        assert sorted(i.index for i in journal.snapshots.list())[-2:] == [5, 10]
    assert "the snapshot policy" not in asked


def test_replicated_components_are_compared_at_every_digest_live_and_on_replay(tmp_path, group, monkeypatch):
    compared = []
    original = Collectives.gather

    def gather(self, values, what):
        if what.startswith("the digest at index "):
            compared.append(int(what.rsplit(" ", 1)[1]))
        return original(self, values, what)

    monkeypatch.setattr(Collectives, "gather", gather)
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group, digest_every=2,
                             replicated=["model"], snapshot_on_close=False) as journal:
        train(journal, 6)  # user entries 1 2 4 6 8 10, digests after 2 4 6 8 10
    assert compared == [3, 5, 7, 9, 11]
    compared.clear()
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group, digest_every=2,
                             replicated=["model"]) as journal:
        assert journal.recovery.digests_checked == 5
    assert compared == [3, 5, 7, 9, 11]


def test_rank_divergence_names_the_rank_that_differs():
    error = replay.RankDivergenceError(12, ["model"], [5, 5, 9])
    assert isinstance(error, replay.DivergenceError)
    assert error.ranks == [2] and error.index == 12
    assert "rank(s) [2]" in str(error) and "log entry 12" in str(error)


def test_agree_reraises_this_ranks_error(group):
    ranks = Collectives(group)
    with pytest.raises(KeyError, match="mine"):
        ranks.agree(KeyError("mine"), "a step")
    ranks.agree(None, "a step")
    assert ranks.gather_lists([3, 4, 5], "lists") == [[3, 4, 5]]
    assert ranks.gather_lists([], "lists") == [[]]


def test_collectives_need_an_initialised_group():
    with pytest.raises(ValueError, match="init_process_group"):
        Collectives(None)




def test_operator_commands_refuse_one_rank_of_a_multirank_journal(tmp_path, group):
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group) as journal:
        train(journal, 3)
    rank0 = tmp_path / "rank-0"
    with pytest.raises(replay.RecoveryError, match="misalign"):
        replay.truncate(rank0, after=1)
    from replay.__main__ import main

    assert main(["prune", str(rank0), "--keep-last", "1"]) == 2
    assert [e.index for e in replay.entries(rank0)] == [1, 2, 3]


def test_an_empty_rank_beside_a_rank_without_entries_is_not_lost(tmp_path, group):
    """A rank killed inside the first open leaves no log; with no entries anywhere, the
    restart creates it (the lost-directory refusal is only for ranks beside entries)."""
    replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group).close()
    import shutil

    shutil.rmtree(tmp_path / "rank-0" / "log")
    shutil.rmtree(tmp_path / "rank-0" / "snapshots")
    with replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group) as journal:
        train(journal, 2)
        assert journal.flush() == 2


# ---------------------------------------------------------------- the cut rule (replay/ranks/cut.py)

from replay.ranks import cut as rank_cut  # noqa: E402


def positions(*rows):
    return [rank_cut.Position(*row) for row in rows]


def test_the_cut_is_the_minimum_counted_last_index_and_a_crash_cut_is_allowed():
    # Rank 1 is ahead by entries no flush returned (acknowledged 8 on both): an ordinary crash cut.
    cut = rank_cut.decide(positions((10, 10, 1, 8, 1), (12, 12, 1, 8, 1)))
    assert (cut.index, cut.acknowledged, cut.behind, cut.blocked, cut.truncates) == (10, 8, (), (), True)
    assert cut.refusal("DIR") is None
    # A rank that already holds the record of this cut keeps it; the other one truncates.
    cut = rank_cut.decide(positions((10, 11, 1, -1, 0), (12, 12, 1, -1, 0)))
    assert cut.index == 10 and not cut.truncates_rank(rank_cut.Position(10, 11, 1))
    assert cut.truncates_rank(rank_cut.Position(12, 12, 1))


def test_a_rank_behind_the_acknowledged_index_is_refused_naming_it_the_index_and_the_remedy(tmp_path):
    cut = rank_cut.decide(positions((100, 100, 90, 100, rank_cut.FROM_OWN_RECORD | rank_cut.FROM_GROUP_RECORD),
                                    (80, 80, 70, 80, rank_cut.FROM_OWN_RECORD)))
    assert (cut.index, cut.acknowledged, cut.behind) == (80, 100, ((1, 80),))
    error = cut.refusal(tmp_path)
    assert isinstance(error, rank_cut.RankBehindError) and isinstance(error, replay.RecoveryError)
    text = str(error)
    assert f"rank 1's log ends at index 80 ({tmp_path / 'rank-1' / 'log'}), below index 100" in text
    assert str(tmp_path / "rank-0" / layout.ACK_FILE) in text
    assert str(tmp_path / "group" / "snapshots" / f"{100:020d}.json") in text
    assert "entries 81..100" in text and "Nothing was changed on any rank" in text
    assert f"Put back a copy of {tmp_path / 'rank-1'} that holds index 100 or later" in text


def test_a_cut_into_a_ranks_sealed_history_is_refused_before_anything_changes(tmp_path):
    # No acknowledgement known (a journal from before the records): rank 0 sealed through 60.
    cut = rank_cut.decide(positions((100, 100, 61, -1, 0), (40, 40, 30, -1, 0)))
    assert (cut.index, cut.behind, cut.blocked) == (40, (), ((0, 60),))
    text = str(cut.refusal(tmp_path))
    assert f"the cut is index 40, where rank 1's ({tmp_path / 'rank-1' / 'log'}) log ends" in text
    assert "rank 0's entries through 60 are sealed in its archive" in text
    assert f"Put back a copy of {tmp_path / 'rank-1'} that holds index 60 or later" in text
    # A rank at the cut whose LMDB is empty (compacted through its last) needs no truncation.
    assert rank_cut.decide(positions((40, 40, 41, -1, 0), (40, 40, 30, -1, 0))).blocked == ()


def test_flush_records_the_acknowledged_index_and_a_rank_put_back_from_an_older_copy_is_refused(tmp_path, group):
    import shutil

    run = tmp_path / "run"
    with replay.Journal.open(run, state=make_state(), ops=make_ops(), group=group) as journal:
        train(journal, 3)
        assert journal.flush() == 3
        assert layout.read_acknowledged(layout.rank_dir(run, 0)) == 3
    shutil.copytree(layout.rank_dir(run, 0), tmp_path / "copy-at-3")
    with replay.Journal.open(run, state=make_state(), ops=make_ops(), group=group) as journal:
        train(journal, 6)
    assert layout.newest_global_record(run) == 6  # the closing snapshot, committed by every rank
    shutil.rmtree(layout.rank_dir(run, 0))
    shutil.copytree(tmp_path / "copy-at-3", layout.rank_dir(run, 0))  # its own record says 3
    with pytest.raises(rank_cut.RankBehindError, match=r"rank 0's log ends at index 3 .*below index 6") as caught:
        replay.Journal.open(run, state=make_state(), ops=make_ops(), group=group)
    assert str(run / "group" / "snapshots" / f"{6:020d}.json") in str(caught.value)
    assert [e.index for e in replay.entries(layout.rank_dir(run, 0))][-1] == 3  # nothing truncated or appended


def test_a_damaged_acknowledged_record_refuses_the_open_naming_it(tmp_path, group):
    replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group).close()
    (layout.rank_dir(tmp_path, 0) / layout.ACK_FILE).write_bytes(b'{"format": 1, "index": -4}')
    with pytest.raises(layout.RankRecordError, match="is not a log index") as caught:
        replay.Journal.open(tmp_path, state=make_state(), ops=make_ops(), group=group)
    assert str(layout.rank_dir(tmp_path, 0) / layout.ACK_FILE) in str(caught.value)


def test_acknowledged_record_is_overwritten_in_place_at_a_fixed_width_and_replaces_anything_else(tmp_path):
    layout.write_acknowledged(tmp_path, 7)
    path = tmp_path / layout.ACK_FILE
    inode = path.stat().st_ino
    layout.write_acknowledged(tmp_path, 12345678901234)
    assert path.stat().st_ino == inode and path.stat().st_size == layout.ACK_WIDTH  # in place: one fdatasync
    assert layout.read_acknowledged(tmp_path) == 12345678901234
    path.unlink()
    os.mkfifo(path)  # a hostile file: never opened blocking, replaced
    layout.write_acknowledged(tmp_path, 3)
    assert layout.read_acknowledged(tmp_path) == 3 and path.stat().st_size == layout.ACK_WIDTH
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
