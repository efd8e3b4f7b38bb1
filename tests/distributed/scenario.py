"""One multi-rank journal under test: generations of the DDP workload, and the checks after them.

`Scenario` runs `workload.train` on a `Launcher`, generation after generation, over one
journal directory, counting kills, failpoints fired, restarts and acknowledged entries.
`check` asserts the issue's claims on what the generations left:

1. the final state of every rank is bit-identical to the uninterrupted run (plain DDP,
   no journal) and to every other rank (with FSDP: each rank's shards to the same rank's);
2. every open agreed: after each recovery every rank reports the same index and cut;
3. nothing acknowledged was lost: every index a flush returned is at or below the index
   the next open recovered, and the entry each rank appended there is still in its log
   (same op, same payload ids); the train_step entries are exactly steps 0..N-1, once
   each, in order, on every rank, and the ranks' logs hold the same op at every index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import workload
from .checks import assert_bit_identical, differences, load_states, read_jsonl, read_lines
from .harness import Generation, Kill, Launcher

FIRED = re.compile(r"failpoint (\S+): kill")


@dataclass
class Counts:
    """What a scenario did: generations (restarts = generations - 1), SIGKILLs (by the
    launcher or a failpoint), survivors the launcher terminated, failpoints fired, and
    the flushes that returned (acknowledged) with the highest global index acknowledged."""

    generations: int = 0
    kills: int = 0
    terminated: int = 0
    fired: list[str] = field(default_factory=list)
    acks: int = 0
    acked_index: int = 0
    recoveries_with_truncation: int = 0
    snapshots_loaded: set = field(default_factory=set)

    def __str__(self) -> str:
        return (f"generations={self.generations} restarts={max(0, self.generations - 1)} kills={self.kills} "
                f"terminated={self.terminated} failpoints={len(self.fired)} {sorted(set(self.fired))} "
                f"acknowledged flushes={self.acks} newest acknowledged index={self.acked_index} "
                f"recoveries that truncated={self.recoveries_with_truncation} "
                f"snapshots recovered from={sorted(self.snapshots_loaded)}")


class Scenario:
    """Generations of `world_size` ranks training to `steps` under the journal at ``tmp/journal``."""

    def __init__(self, tmp: Path, world_size: int, steps: int, **options):
        self.world_size, self.steps = world_size, steps
        self.root, self.out = tmp / "journal", tmp / "out"
        self.out.mkdir(parents=True)
        self.launcher = Launcher(world_size, tmp / "logs")
        self.options = {"steps": steps, "out": str(self.out), "snapshot_every": 4, "keep_last": 2, **options}
        self.counts = Counts()

    def __enter__(self) -> "Scenario":
        return self

    def __exit__(self, *exc) -> None:
        self.launcher.close()

    def run(self, *, kill: Kill | None = None, env: dict[int, dict] | None = None, survivors_grace: float = 0.0,
            **overrides) -> Generation:
        """One generation (a restart of the whole group after the first); its options override the scenario's."""
        number = len(self.launcher.generations)
        for rank in range(self.world_size):  # what check() reads must come from the last generation
            (self.out / f"rank-{rank}.safetensors").unlink(missing_ok=True)
        # The first generation's init is the journal's initial state (the reference's); a
        # restart builds another one, which recovery must overwrite completely.
        options = {**self.options, "generation": number, "init": 0 if number == 0 else 1000 + number, **overrides}
        gen = self.launcher.run(workload.train, (str(self.root), options), kill=kill, env=env,
                                survivors_grace=survivors_grace)
        assert not gen.timed_out, "a generation hung:\n" + gen.describe()
        self.counts.generations += 1
        self_killed = overrides.get("die_rank") if "die_at_step" in overrides else None
        for exit_ in gen.exits:
            fired = FIRED.findall(exit_.log)
            self.counts.fired += fired
            if exit_.killed and (fired or exit_.rank in (gen.killed, self_killed)):
                self.counts.kills += 1
            elif exit_.exitcode == -15 or (exit_.killed and gen.killed is not None):
                self.counts.terminated += 1
        return gen

    def finish(self, tries: int = 3) -> Generation:
        """Run clean generations (no kill, no failpoint) until one ends cleanly."""
        for _ in range(tries):
            gen = self.run()
            if gen.clean:
                return gen
        raise AssertionError(f"no clean generation in {tries} tries:\n{gen.describe()}")

    def trained(self) -> int:
        """The next step to train: one past the newest step rank 0 acknowledged (0 before any)."""
        path = self.out / "acks-rank-0.txt"
        lines = path.read_text().split("\n") if path.exists() else []
        return max((int(line.split()[3]) + 1 for line in lines if line.strip()), default=0)

    def fired(self, gen: Generation) -> list[str]:
        return [name for exit_ in gen.exits for name in FIRED.findall(exit_.log)]

    def opens(self, rank: int) -> list[dict]:
        return read_jsonl(self.out / f"opens-rank-{rank}.jsonl")

    def check(self, reference: list[dict]) -> Counts:
        """The module doc's checks 1-3; returns the counts (also for the test to print)."""
        states = load_states(self.out, self.world_size)
        if self.options.get("fsdp"):  # each rank holds its own shards: equal to the reference's same rank
            for rank, state in enumerate(states):
                diff = differences(state, reference[rank])
                assert not diff, f"after {self.counts}: rank {rank}'s shards differ from the reference in {diff[:8]}"
        else:
            assert_bit_identical(states, reference, f"after {self.counts}")
        self._check_opens()
        self._check_logs()
        return self.counts

    def _check_opens(self) -> None:
        by_generation: dict[int, list[dict]] = {}
        for rank in range(self.world_size):
            for record in self.opens(rank):
                by_generation.setdefault(record["generation"], []).append(record)
        for number, records in sorted(by_generation.items()):
            if len(records) < self.world_size:
                continue  # a rank died between the group's recovery and its own report
            indexes = {r["index"] for r in records}
            cuts = {r["cut"] for r in records}
            assert len(indexes) == 1 and len(cuts) == 1, f"generation {number}: ranks recovered apart: {records}"
            snapshots = {r["snapshot"] for r in records}
            assert len(snapshots) == 1, f"generation {number}: ranks loaded different snapshots: {records}"
            self.counts.snapshots_loaded |= snapshots
            if any(r["truncated"] for r in records):
                self.counts.recoveries_with_truncation += 1

    def _check_logs(self) -> None:
        import replay
        from replay.ranks import layout

        ops_by_rank = []
        for rank in range(self.world_size):
            entries = list(replay.entries(layout.rank_dir(self.root, rank)))
            ops_by_rank.append([(e.index, e.op) for e in entries])
            steps = [e for e in entries if e.op == "train_step"]
            assert len(steps) == self.steps, f"rank {rank}: {len(steps)} train_step entries, expected {self.steps}"
            for step, entry in enumerate(steps):
                assert entry.payload == workload.payload(step, rank), \
                    f"rank {rank}: entry {entry.index} is not step {step}'s payload: {entry.payload}"
            by_index = {e.index: e for e in entries}
            for line in read_lines(self.out / f"acks-rank-{rank}.txt"):
                generation, acked, index, step = map(int, line.split())
                self.counts.acks += rank == 0
                self.counts.acked_index = max(self.counts.acked_index, acked)
                # Every rank flushed after appending this step, so the global index covers it.
                assert acked >= index, f"rank {rank}: flush acknowledged {acked}, below its entry {index}"
                entry = by_index.get(index)
                assert entry is not None and entry.op == "train_step" and \
                    entry.payload == workload.payload(step, rank), \
                    f"rank {rank}: acknowledged entry {index} (step {step}, generation {generation}) lost: {entry}"
                later = [r["index"] for r in self.opens(rank) if r["generation"] > generation]
                assert all(i >= acked for i in later), \
                    f"rank {rank}: generation {generation} acknowledged {acked}, a later open recovered {later}"
        for rank, ops in enumerate(ops_by_rank[1:], start=1):
            assert ops == ops_by_rank[0], f"rank {rank}'s log holds other ops at the same indexes than rank 0's"
