"""The one checker every fault-matrix test uses (ALICE's "acknowledged means present").

A writer child reports every acknowledged entry over a pipe: for a Journal, each
(term, index, steps) once `flush()` returned (replay/INVARIANTS.md invariant 1: flush makes every
applied entry durable); for a bare EventLog, each (term, index) once `append` (sync) or
`wait_durable` returned. After the fault, a recovery runs in a fresh process and the
checker asserts:

  (a) every acknowledged entry is present and intact: same term at the same index, the
      payload the workload defines for it, a sound checksum chain;
  (b) the recovered state equals a reference fold of the log prefix, bit for bit (the
      workload is deterministic, so the fold of its first `steps` ops *is* the fold of
      the log's user entries, which (a) checks entry by entry);
  (c) at most the unacknowledged tail is missing: the recovered index and step count
      are at least the newest acknowledged ones, and the retained entries are exactly
      the workload's, contiguous;
  (d) an error the writer saw names the fault (`assert_error_names`).

Modules: `workload` (the state, the ops, the reference fold, the fingerprint), `framing`
(messages), `journal_child` (the Journal writer child), `children` (running children),
`checks` ((a)-(d) for Journals), `log_writers` (bare eventlog writers and their check).

Messages are frames in the log's own payload codec (msgpack plus tensors, never pickle)
with a 4-byte length prefix; a frame cut short by a kill is
ignored (it was never completely reported). torch is imported lazily so that children
running only `eventlog` start in 0.1 s.
"""

from .checks import Tally, assert_error_names, check_journal
from .children import Run, finish_child, popen_child, run_child, run_forked
from .framing import frames, send
from .journal_child import journal_writer, open_journal, recovered_in_fresh_process, summarize
from .log_writers import check_log, log_payload, log_writer
from .workload import fingerprint, make_ops, make_state, payload_for, reference

__all__ = [
    "Tally", "assert_error_names", "check_journal", "Run", "finish_child", "popen_child", "run_child", "run_forked",
    "frames", "send", "journal_writer", "open_journal", "recovered_in_fresh_process", "summarize", "check_log",
    "log_payload", "log_writer", "fingerprint", "make_ops", "make_state", "payload_for", "reference",
]
