"""The `replay.group.Group` contract, run against every implementation: `Solo` and the multi-rank
`Coordinator` at world size 1 (gloo, one rank in this process, a FileStore in a tmp dir).

One abstract class (`GroupContract`) holds the tests, as eventsourcing's persistence
tests do; each implementation subclasses it and says how to make one. The first half
drives a Group directly (with a stand-in snapshotter); the second opens a Journal
through it, so the journal's one code path is checked with both. What only two or
more ranks can show (a minimum over different durable indexes, a divergence) is in
tests/distributed/.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import replay
from replay.group import Solo
from replay.policies import PolicyClock
from replay.ranks.collectives import Collectives
from replay.ranks.coordinator import Coordinator

pytestmark = pytest.mark.timeout(120)


class StandInSnapshotter:
    """What a Group reads of the journal's Snapshotter."""

    def __init__(self, in_flight=False, committed=None):
        self.in_flight = in_flight
        self.committed = committed  # (index, term) of the newest committed snapshot, or None
        self.protected = None


class EmptyStore:
    def list(self):
        return []


def make_ops() -> replay.Ops:
    ops = replay.Ops()

    @ops.op
    def add(state, *, value):
        state["w"] += value

    @ops.op
    def boom(state, *, value):
        state["w"] += value  # half-mutated before it raises: a rollback must undo this
        raise RuntimeError("the handler failed")

    return ops


def make_state():
    return {"w": torch.zeros(3)}


class GroupContract:
    """Every Group passes these. A subclass sets `rolls_back` and implements `make` and `open`."""

    rolls_back: bool  # Solo rebuilds the state after a failed handler; a multi-rank group poisons

    def make(self, tmp_path: Path, policy: replay.Every, snapshotter):
        """A Group of this implementation, attached to `snapshotter`."""
        raise NotImplementedError

    def open(self, path: Path, **options) -> replay.Journal:
        """A Journal at `path` that talks to a Group of this implementation."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the Group itself

    def test_one_process_is_rank_0_of_1(self, tmp_path):
        group = self.make(tmp_path, replay.Every(entries=4), StandInSnapshotter())
        assert (group.rank, group.size) == (0, 1)

    def test_flush_reports_the_local_durable_index(self, tmp_path):
        group = self.make(tmp_path, replay.Every(entries=4), StandInSnapshotter())
        assert group.flush(0) == 0
        assert group.flush(7) == 7
        assert group.flush(12) == 12

    def test_the_entries_bound_decides_on_the_count_alone(self, tmp_path):
        policy = replay.Every(entries=4)
        group = self.make(tmp_path, policy, StandInSnapshotter())
        clock = PolicyClock(policy)
        decisions = []
        for index in range(1, 10):
            clock.add_entry(0, 0.0)
            due = group.snapshot_due(clock, index)
            decisions.append(due)
            if due:
                clock.reset()
        assert [i for i, due in enumerate(decisions, 1) if due] == [4, 8]

    def test_nothing_is_due_before_the_policy_says_so(self, tmp_path):
        policy = replay.Every(entries=100)
        group = self.make(tmp_path, policy, StandInSnapshotter())
        clock = PolicyClock(policy)
        for index in range(1, 40):
            clock.add_entry(0, 0.0)
            assert not group.snapshot_due(clock, index)

    def test_confirm_and_the_replicated_check_pass_for_one_rank(self, tmp_path):
        snapshotter = StandInSnapshotter(committed=(4, 1))
        group = self.make(tmp_path, replay.Every(entries=4), snapshotter)
        group.confirm()
        group.check_replicated(4)

    def test_a_failed_handler_is_rolled_back_or_poisons(self, tmp_path):
        group = self.make(tmp_path, replay.Every(entries=4), StandInSnapshotter())
        rebuilt = []
        cause = RuntimeError("handler")
        poison = group.after_handler_error(5, cause, lambda: rebuilt.append(True))
        if self.rolls_back:
            assert poison is None and rebuilt == [True]
        else:
            assert poison is cause and rebuilt == []

    def test_a_failed_rebuild_is_raised(self, tmp_path):
        group = self.make(tmp_path, replay.Every(entries=4), StandInSnapshotter())

        def rebuild():
            raise OSError("disk")

        if self.rolls_back:
            with pytest.raises(OSError, match="disk"):
                group.after_handler_error(5, RuntimeError("handler"), rebuild)
        else:
            assert isinstance(group.after_handler_error(5, RuntimeError("handler"), rebuild), RuntimeError)

    # ---------------------------------------------------------------- a Journal through it

    def test_journal_snapshots_where_the_policy_decides(self, tmp_path):
        with self.open(tmp_path / "j", snapshot=replay.Every(entries=4), async_snapshots=False,
                       snapshot_on_close=False) as journal:
            for _ in range(9):
                journal.apply("add", value=1.0)
            assert [info.index for info in journal.snapshots.list()] == [0, 4, 8]

    def test_journal_flush_returns_the_durable_index(self, tmp_path):
        with self.open(tmp_path / "j") as journal:
            assert journal.flush() == 0
            for _ in range(5):
                journal.apply("add", value=1.0)
            assert journal.flush() == journal.index == 5
            assert journal.durable_index == 5
            assert (journal.rank, journal.world_size) == (0, 1)

    def test_journal_handler_error_drops_the_entry(self, tmp_path):
        path = tmp_path / "j"
        journal = self.open(path)
        try:
            journal.apply("add", value=1.0)
            with pytest.raises(RuntimeError, match="the handler failed"):
                journal.apply("boom", value=5.0)
            assert journal.log.last_index == 1  # the failed entry is gone either way (invariant 6)
            if self.rolls_back:
                assert journal.index == 1 and journal.state["w"].tolist() == [1.0, 1.0, 1.0]
                journal.apply("add", value=1.0)
                assert journal.index == 2
            else:
                with pytest.raises(replay.JournalPoisonedError):
                    journal.apply("add", value=1.0)
        finally:
            journal.close()
        with self.open(path) as reopened:  # either way a reopen recovers the entries before it
            assert reopened.count("add") == (2 if self.rolls_back else 1)
            assert reopened.count("boom") == 0

    def test_journal_close_snapshots_flushes_and_is_idempotent(self, tmp_path):
        path = tmp_path / "j"
        journal = self.open(path)
        for _ in range(3):
            journal.apply("add", value=2.0)
        journal.close()
        journal.close()
        with pytest.raises(replay.ClosedError):
            journal.apply("add", value=1.0)
        with self.open(path) as reopened:
            assert reopened.recovery.snapshot_index == 3 and len(reopened.recovery.replayed) == 0
            assert reopened.state["w"].tolist() == [6.0, 6.0, 6.0]

    def test_journal_closed_by_an_exception_keeps_its_entries(self, tmp_path):
        path = tmp_path / "j"
        with pytest.raises(KeyError):
            with self.open(path) as journal:
                journal.apply("add", value=1.0)
                raise KeyError("the job's own error")
        with self.open(path) as reopened:
            assert reopened.index == 1 and reopened.state["w"].tolist() == [1.0, 1.0, 1.0]


class TestSolo(GroupContract):
    rolls_back = True

    def make(self, tmp_path, policy, snapshotter):
        group = Solo()
        group.attach(snapshotter)
        return group

    def open(self, path, **options):
        return replay.Journal.open(path, state=make_state(), ops=make_ops(), **options)

    def test_no_policy_snapshot_while_one_is_in_flight(self, tmp_path):
        policy = replay.Every(entries=1)
        clock = PolicyClock(policy)
        clock.add_entry(0, 0.0)
        assert not self.make(tmp_path, policy, StandInSnapshotter(in_flight=True)).snapshot_due(clock, 1)
        assert self.make(tmp_path, policy, StandInSnapshotter(in_flight=False)).snapshot_due(clock, 1)


class TestCoordinator(GroupContract):
    rolls_back = False

    @pytest.fixture(autouse=True)
    def process_group(self, tmp_path):
        """The default process group: gloo, one rank in this process, a FileStore in the tmp dir."""
        store = dist.FileStore(str(tmp_path / "filestore"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=30))
        try:
            yield dist.group.WORLD
        finally:
            dist.destroy_process_group()

    def make(self, tmp_path, policy, snapshotter):
        root = tmp_path / "group-dir"
        (root / "rank-0").mkdir(parents=True, exist_ok=True)
        group = Coordinator(Collectives(dist.group.WORLD), root, make_state(), [], policy, EmptyStore(), None)
        group.attach(snapshotter)
        return group

    def open(self, path, **options):
        return replay.Journal.open(path, state=make_state(), ops=make_ops(), group=dist.group.WORLD, **options)

    def test_confirm_protects_the_snapshot_every_rank_committed(self, tmp_path):
        snapshotter = StandInSnapshotter(committed=(4, 1))
        group = self.make(tmp_path, replay.Every(entries=4), snapshotter)
        group.confirm()
        assert snapshotter.protected == 4 and group.confirmed == 4


def test_the_journal_never_asks_which_group_replica_or_preemption_it_holds():
    """The seam holds: journal.py imports nothing of replay.ranks or replay.replica, and never
    checks whether it has a group, a replica or a preemption (replay/assembly.py decides)."""
    import ast

    import replay.journal

    tree = ast.parse(Path(replay.journal.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):  # `from .ranks import x`, `from . import replica`
            imported |= {node.module} if node.module else {alias.name for alias in node.names}
    assert not {name for name in imported if name.startswith(("ranks", "replica"))}, imported
    asked = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Compare)
             and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops)
             and any(word in ast.unparse(node.left) for word in ("group", "replica", "shipper", "preemption"))]
    assert not asked, asked
