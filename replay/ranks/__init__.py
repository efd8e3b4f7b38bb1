"""Multi-rank journals: one journal per rank of a torch.distributed group, coordinated by collectives.

A Journal opened with ``group=`` (replay.Journal.open) is SPMD: every rank calls open,
apply, flush, snapshot and close in the same order. Each rank owns ``DIR/rank-<r>/``,
an ordinary single-process journal directory, and never reads another rank's files (DIR
may be a node-local disk). Everything the ranks must agree on they agree through
collectives on the group, never through a file or a service of ours:

- layout.py        what is on disk: rank directories, each rank's record of the world
                   size and of the acknowledged index, rank 0's records of globally
                   committed snapshots
- collectives.py   the few collectives used (min, max, gather of small int vectors) and
                   the agreement step that turns one rank's failure into an error on all
- cut.py           the cut rule (shared by recovery, the audit and the CLI) and when a
                   cut is refused: a rank behind what the group acknowledged, or a
                   truncation into a rank's sealed history
- recovery.py      the cut, the common snapshot and the lockstep replay on every open
- coordinator.py   the live run: the global durable index, identical snapshot
                   decisions, confirming snapshots every rank committed, and the
                   cross-rank digest of replicated components
- audit.py         the cross-rank audit ``replay log/stats/verify DIR`` print (read-only)

The protocol and its invariants are in replay/INVARIANTS.md (section "Multi-rank").
"""
