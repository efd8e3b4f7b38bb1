"""The fault matrix (README.md, "The project's fault matrix"): one marker per row, so a row can be selected (`pytest -m fault_sigkill`).

Every test here also carries the project-wide `crash` marker. strace is required where
`CI` is set: a fault test must never silently skip in CI.
"""

import os
import shutil

import pytest

# The parent is the fork server: children forked from it start with torch and the three
# packages already imported (~1 s saved per child, hundreds of children per run).
import eventlog  # noqa: F401
import replay  # noqa: F401
import snapshots  # noqa: F401
import torch  # noqa: F401

ROWS = {
    "fault_sigkill": "row 1: SIGKILL torture (random moments, snapshot writes, compaction, recovery)",
    "fault_syncpoint": "row 2: crash at every fdatasync/fsync/rename/pwrite64 (strace signal=KILL)",
    "fault_ioerror": "row 3: EIO/ENOSPC injected by strace, fail-once and fail-always",
    "fault_diskfull": "row 4: RLIMIT_FSIZE (EFBIG) and LMDB map growth under a live reader",
    "fault_snapshot_damage": "row 5: torn, zeroed and garbage snapshots fall back to the previous one",
    "fault_log_corruption": "row 6: latent corruption in a committed log entry",
    "fault_failpoint": "row 7: REPLAY_FAILPOINTS kill/raise at named commit, compaction, recovery points",
    "fault_stale_reader": "row 8: readers SIGKILLed holding read transactions; zombie writer fenced",
    "fault_hostile": "row 9: hostile logs and snapshots: clear errors, bounded memory, nothing outside touched",
    "fault_race": "row 10: races: rollback vs snapshot follow-up, group flush vs truncation, live readers, second threads, takeover",
    "fault_power_loss": "row 11: power loss: crash images (file at a sync point + subsets of later writes), directory fsyncs",
    "fault_short_file": "row 12: a data.mdb cut short or structurally damaged: reported as damage, never a signal or traceback",
    "fault_divergence": "row 13: live and replay see the same bytes; mismatched state layouts and foreign histories refused",
    "fault_hostile_files": "row 14: FIFOs, devices, symlinks, huge and amplifying files in the snapshot store",
    "fault_audit": "row 15: audit path: atomic truncation record, rewrites seen by tail -f, escaped output, exit codes",
    "fault_archive": "row 16: tiered log: kills and damage while compaction seals archive segments; nothing acknowledged is lost",
    "fault_preemption": "row 17: SIGTERM/SIGUSR1 at random moments: the apply finishes, a snapshot lands, the next open replays nothing",
    "fault_dataloader": "row 18: a multi-worker DataLoader under a journal, SIGKILLed: the resumed run is bit-identical",
    "fault_ranks": "row 19: multi-rank journals: random ranks SIGKILLed, kills at every protocol step, damaged snapshots",
    "fault_replica": "row 20: replicas: the writer SIGKILLed and its directory deleted; restore reproduces the replica index",
    "fault_supervisor": "row 21: replay run: jobs SIGKILLed, hung, failing, preempted; restarts end bit-identical",
}

STRACE = shutil.which("strace")


def pytest_configure(config):
    for name, text in ROWS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if STRACE is None and os.environ.get("CI"):
        raise pytest.UsageError("strace is required in CI for tests/crash (.ci/run installs it)")


@pytest.fixture
def strace():
    """The strace binary; skips outside CI when missing (CI fails at configure instead)."""
    if STRACE is None:
        pytest.skip("strace not installed")
    return STRACE
