"""The checks (a)-(d) of the package docstring, for Journals."""

from __future__ import annotations

from dataclasses import dataclass, field

from .workload import payload_for, reference, fingerprint
from .children import Run


@dataclass
class Tally:
    """Counts for the matrix table: runs, acknowledged entries checked, lost, diverged."""

    row: str
    runs: int = 0
    acked_checked: int = 0  # (ack, check) pairs: every check re-checks every earlier ack
    lost: int = 0
    diverged: int = 0
    acked: set = field(default_factory=set)  # distinct acknowledged entries

    def report(self) -> None:
        print(f"\nMATRIX {self.row}: runs={self.runs} acked={len(self.acked)} checks={self.acked_checked} "
              f"lost={self.lost} diverged={self.diverged}")


def check_journal(summary: dict, acks: list[tuple[int, int, int]], tally: Tally | None = None) -> None:
    """(a), (b), (c) for a Journal recovered in a fresh process (`summary`) against every ack so far."""
    entries = {index: (term, op, payload) for index, term, op, payload in summary["entries"]}
    problems, lost = [], 0
    ok, text = summary["verify"]
    if not ok:
        problems.append(f"log verify failed: {text}")
    # (c) the retained log is the workload, contiguous; only an unacknowledged tail may be missing.
    indexes = sorted(entries)
    if indexes != list(range(summary["first_index"], summary["last_index"] + 1)):
        problems.append(f"log indexes are not contiguous: {indexes[:5]}...")
    for index in indexes:
        term, op, stored = entries[index]
        if op.startswith("replay."):
            continue
        step = stored["p"]["step"]
        if (op, stored["p"]) != payload_for(step):
            problems.append(f"entry {index} holds {op} {stored['p']}, not the workload's step {step}")
    for term, index, steps in acks:
        # (a) acknowledged means present: same term at that index (a rewrite means the
        # acknowledged entry was lost and replaced) or compacted into the loaded snapshot.
        if index < summary["first_index"]:
            present = summary["index"] >= index and summary["steps"] >= steps
        else:
            present = index in entries and entries[index][0] == term
        if not present:
            lost += 1
            problems.append(f"acknowledged entry {index} (term {term}, steps {steps}) is missing")
    if acks:
        if summary["index"] < max(a[1] for a in acks) or summary["steps"] < max(a[2] for a in acks):
            problems.append(f"recovered to index {summary['index']} / {summary['steps']} steps, "
                            f"but {max(a[1] for a in acks)} was acknowledged")
    # (b) bit-for-bit against the reference fold of the prefix.
    expected = fingerprint(reference(summary["steps"]))
    diverged = summary["fingerprint"] != expected
    if diverged:
        differing = [k for k in expected if summary["fingerprint"].get(k) != expected[k]]
        problems.append(f"recovered state differs from the reference fold at {differing}")
    if tally is not None:
        tally.acked_checked += len(acks)
        tally.acked.update(acks)
        tally.lost += lost
        tally.diverged += int(diverged)
    assert not problems, "\n".join(problems)


def assert_error_names(run: Run, *words: str) -> None:
    """(d): the error the writer saw names the fault (any of `words`, case-insensitive)."""
    assert run.errors, f"the writer reported no error; stderr: {run.stderr_tail()}"
    text = " ".join(" ".join(e) for e in run.errors).lower()
    assert any(w.lower() in text for w in words), f"error does not name the fault ({words}): {text[:600]}"
