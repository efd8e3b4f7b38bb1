"""The result of `EventLog.verify()`: what was checked and every problem found."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Damage:
    """One problem at one index (or index 0 for log-wide problems such as bad metadata)."""

    index: int
    reason: str


@dataclass
class VerifyReport:
    """Every checksum, the chain, index contiguity and the term sequence, checked once.

    `ok` is True only when `damaged` is empty. `terms` lists (term, first index written
    in that term) in log order: each restart of a writer shows as a new term.
    """

    path: str
    first_index: int
    last_index: int
    current_term: int
    boundary_term: int
    checked: int = 0
    payload_bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)
    terms: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def __str__(self) -> str:
        lines = [
            f"log {self.path}: entries {self.first_index}..{self.last_index} "
            f"({self.checked} checked, {self.payload_bytes} payload bytes), current term {self.current_term}",
        ]
        lines += [f"  damaged at {d.index}: {d.reason}" for d in self.damaged]
        lines.append("  verdict: " + ("sound" if self.ok else f"{len(self.damaged)} problem(s)"))
        return "\n".join(lines)
