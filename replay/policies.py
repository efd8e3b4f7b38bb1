"""Snapshot policies: when the journal takes a snapshot so that recovery stays short.

A snapshot bounds recovery to "load it, then replay what came after". `Every` fires
when any one of its bounds is reached since the last snapshot was started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Every:
    """Snapshot when any bound is reached since the last snapshot (None disables a bound).

    - entries: applied entries (engine digest entries included);
    - seconds: wall-clock seconds;
    - log_bytes: bytes appended to the log (each entry's header, op name and payload);
    - replay_seconds: estimated replay time, the sum of the measured apply cost of every
      entry since the snapshot (replay runs the same handlers on the same payloads).

    ``Every()`` with no bound never snapshots on its own (only ``journal.snapshot()``).
    """

    entries: int | None = None
    seconds: float | None = None
    log_bytes: int | None = None
    replay_seconds: float | None = None

    def __post_init__(self):
        for name in ("entries", "seconds", "log_bytes", "replay_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Every({name}=...) must be positive or None, got {value!r}")



class PolicyClock:
    """What has accumulated since the last snapshot, measured against an `Every` policy."""

    def __init__(self, policy: Every):
        self.policy = policy
        self._bytes_seen = 0  # the log's running total of appended bytes at the last add_entry
        # Every() with no bound is never due: `due` answers at once (it runs after every
        # apply, cache-cold after the step's compute, where each bytecode counts)
        self._unbounded = all(getattr(policy, name) is None
                              for name in ("entries", "seconds", "log_bytes", "replay_seconds"))
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (a snapshot was just started)."""
        self.entries = 0
        self.log_bytes = 0
        self.replay_seconds = 0.0
        self.started = time.monotonic()

    def add(self, entries: int = 1, log_bytes: int = 0, apply_seconds: float = 0.0) -> None:
        """Account for entries applied since the last check."""
        self.entries += entries
        self.log_bytes += log_bytes
        self.replay_seconds += apply_seconds

    def add_entry(self, bytes_appended: int, apply_seconds: float) -> None:
        """Account for one appended entry, given the log's running total of appended bytes
        (what grew since the previous call is this entry's share)."""
        # `add(1, grown, apply_seconds)`, inline: once per apply
        self.entries += 1
        self.log_bytes += bytes_appended - self._bytes_seen
        self._bytes_seen = bytes_appended
        self.replay_seconds += apply_seconds

    def due(self) -> bool:
        """True when any bound of the policy has been reached (never with no entries to cover)."""
        if self._unbounded or self.entries == 0:
            return False
        p = self.policy
        return bool(
            (p.entries is not None and self.entries >= p.entries)
            or (p.seconds is not None and time.monotonic() - self.started >= p.seconds)
            or (p.log_bytes is not None and self.log_bytes >= p.log_bytes)
            or (p.replay_seconds is not None and self.replay_seconds >= p.replay_seconds)
        )
