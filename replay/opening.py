"""Opening a journal: everything `Journal.open` checks and opens before the Journal exists.

In order: the options are checked, a directory whose log was lost is refused, the
determinism guard is set, the environment the journal was created in is compared with
this one (replay.environment), the snapshot store is opened, recovery's preflight runs
against a readonly view of the log (invariant 7: whatever can be refused is refused
before the term is bumped), the log is opened as the writer and the state recovered.
On any failure everything opened so far is released and the error raised.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import snapshots
import torch
from eventlog import Archive, EventLog, FormatError

from . import components, environment, failpoints, layout
from .determinism import DeterministicGuard
from .errors import EnvironmentMismatchError, RecoveryError
from .operator import refuse_live_writer
from .policies import Every
from .preemption import Preemption, check_installable
from .ranks.recovery import recover as group_recover
from .recovery import RecoveryReport, Replayer


def check_options(*, snapshot, digest_every, preemption, environment_policy) -> None:
    """ValueError / TypeError for an option Journal.open cannot take, before anything is touched."""
    if digest_every is not None and (not isinstance(digest_every, int) or digest_every < 1):
        raise ValueError(f"digest_every must be a positive int or None, got {digest_every!r}")
    if not isinstance(snapshot, Every):
        raise TypeError(f"snapshot must be a replay.Every policy, got {type(snapshot).__name__}")
    if preemption is not None:
        if not isinstance(preemption, Preemption):
            raise TypeError(f"preemption must be a replay.Preemption or None, got {type(preemption).__name__}")
        check_installable()
    if environment_policy not in environment.POLICIES:
        raise ValueError(f"environment must be one of {environment.POLICIES}, got {environment_policy!r}")


def open_and_recover(root: Path, replayer: Replayer, *, keep_last: int, durability: str, takeover: bool,
                     deterministic: bool, progress: bool | None, archive: Archive | None, environment_policy: str,
                     keep_log: bool = False, ranks=None, store_options: dict | None = None):
    """(log, store, recovery report, the ExitStack that releases them): the store opened,
    the environment compared, the preflight passed, the log opened as writer, the state
    recovered; a new journal's environment recorded. On any failure everything opened so
    far is released and the error raised.

    `ranks` (replay.ranks.collectives.Collectives): `root` is this rank's directory of a
    multi-rank journal. Every rank learns whether any rank failed to open (all raise),
    and recovery is the group's (replay.ranks.recovery): no preflight snapshot load, as
    the snapshot to load is only known once the ranks have exchanged what they hold."""
    with contextlib.ExitStack() as opened:
        if ranks is None:
            log, store, loaded, changed = _open_parts(opened, root, replayer, keep_last=keep_last,
                                                      durability=durability, takeover=takeover,
                                                      deterministic=deterministic, archive=archive,
                                                      environment_policy=environment_policy, keep_log=keep_log,
                                                      progress=progress, store_options=store_options)
            recovery = replayer.recover(log, store, progress=progress, loaded=loaded)
        else:
            error = None
            try:
                log, store, _, changed = _open_parts(opened, root, replayer, keep_last=keep_last,
                                                     durability=durability, takeover=takeover,
                                                     deterministic=deterministic, archive=archive,
                                                     environment_policy=environment_policy, keep_log=keep_log,
                                                     preflight=False, store_options=store_options)
            except Exception as exc:  # noqa: BLE001 - the other ranks must not wait for this one
                error = exc
            ranks.agree(error, "opening the rank's log and snapshots")
            recovery = group_recover(ranks, replayer, log, store, progress)
        recovery.environment = changed
        return log, store, recovery, opened.pop_all()


def _open_parts(opened: contextlib.ExitStack, root: Path, replayer: Replayer, *, keep_last: int, durability: str,
                takeover: bool, deterministic: bool, archive: Archive | None, environment_policy: str,
                keep_log: bool, preflight: bool = True, progress: bool | None = None,
                store_options: dict | None = None):
    """(log, store, the preflight's report or None, environment differences), each registered on `opened`."""
    if deterministic:
        guard = DeterministicGuard(any(isinstance(t, torch.Tensor) and t.is_cuda
                                       for _, t in components.leaves(replayer.state)))
        opened.callback(guard.release)
    current = environment.fingerprint(replayer.device)  # after the guard: its flags are part of it
    changed, created = compare_environment(root, current, environment_policy)
    # A log that keeps its history (archived, or never compacted) can replay from the
    # initial snapshot when every newer one is damaged, and recovery never replays onto
    # a state built anew: so retention keeps that oldest snapshot too.
    store = snapshots.SnapshotStore(layout.snapshots_dir(root), keep_last=keep_last, failpoint=failpoints.hit,
                                    keep_oldest=archive is not None or keep_log, **(store_options or {}))
    opened.callback(store.close)
    log_dir = layout.log_dir(root)
    if preflight:
        loaded = _preflight(log_dir, store, replayer, takeover, progress)
    else:
        loaded = None
        if not takeover:
            refuse_live_writer(log_dir, "close it there first, or open with takeover=True to fence a hung writer")
    log = EventLog.open(log_dir, durability=durability, takeover=takeover, archive=archive)
    opened.callback(log.close)
    if created is None and log.last_index == 0:
        # A new journal (or one whose creation never got past its first entry): its
        # environment is this one, recorded before any entry depends on it.
        environment.record(root, current)
    return log, store, loaded, changed


def compare_environment(root: Path, current: dict, policy: str) -> tuple[list[str], dict | None]:
    """(differences, the recorded fingerprint or None) for the journal at `root`.

    "ignore" reads nothing. "strict": EnvironmentMismatchError on any difference, and the
    EnvironmentFileError of a damaged file. "warn": the differences (a damaged file is
    one line) and a RuntimeWarning. No recorded fingerprint: nothing to compare."""
    if policy == "ignore":
        return [], None
    try:
        created = environment.recorded(root)
    except environment.EnvironmentFileError as exc:
        if policy == "strict":
            raise
        changed, created = [f"{layout.ENVIRONMENT_FILE}: {exc}"], {}
    else:
        changed = environment.differences(created, current)
    if changed and policy == "strict":
        raise EnvironmentMismatchError(root, changed)
    if changed:
        warnings.warn(f"{root}: replaying in another environment than the journal was created in may not be "
                      f"bit-exact: {'; '.join(changed)}", RuntimeWarning, stacklevel=5)
    return changed, created


def _preflight(log_dir: Path, store, replayer: Replayer, takeover: bool,
               progress: bool | None = None) -> RecoveryReport | None:
    """Recovery's checks against a readonly view of an existing log (invariant 7); None for a new journal."""
    if not takeover:
        refuse_live_writer(log_dir, "close it there first, or open with takeover=True to fence a hung writer")
    try:
        reader = EventLog.open(log_dir, readonly=True)
    except FormatError:
        return None  # no log yet, or its creation never completed: nothing was ever written
    with reader:
        return replayer.preflight(reader, store, progress)


def refuse_to_reinitialise(root: Path) -> None:
    """RecoveryError when `root` holds snapshots but its log is missing or empty.

    Opening would create a fresh log and start over from the initial state, silently
    discarding every entry of the run; a log lost this way is damage to report, not a
    journal to re-create.
    """
    manifests = layout.manifests_dir(root)
    if not manifests.is_dir() or not any(manifests.iterdir()):
        return
    data = layout.log_data_file(root)
    size = data.stat().st_size if data.exists() else None
    if size is None or size == 0:
        what = "missing" if size is None else "empty (0 bytes)"
        raise RecoveryError(
            f"{root} holds snapshots but its log {data} is {what}: the journal is damaged. Restore the log "
            "from a backup; opening it would start a new log and lose every entry")
