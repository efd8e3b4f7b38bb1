"""Bare eventlog writers (acknowledging each entry once it is durable) and their check."""

from __future__ import annotations


from .framing import send, causes
from .checks import Tally


def log_payload(index: int) -> dict:
    return {"i": index, "blob": bytes([index % 251]) * (index % 900)}


def log_writer(path, mode: str, out_fd: int, count: int | None = None) -> None:
    """Append `log_payload` entries to the EventLog at `path` (None: until killed), acking
    each (term, index) once it is durable; errors are reported, then re-raised."""
    from eventlog import EventLog

    try:
        with EventLog.open(path, durability=mode) as log:
            send(out_fd, ("recovered", log.last_index))
            n = 0
            while count is None or n < count:
                i = log.append("step", log_payload(log.last_index + 1))
                if mode != "sync":
                    log.wait_durable(i)
                send(out_fd, ("ack", log.term, i))
                n += 1
        send(out_fd, ("done", i if count else 0))
    except BaseException as exc:
        send(out_fd, ("error", type(exc).__name__, str(exc), causes(exc)))
        raise


def check_log(path, acks: list[tuple[int, int]], tally: Tally | None = None) -> int:
    """(a)-(c) for a bare EventLog after a fault, read in this process: every acked
    (term, index) present with its payload, chain sound, contiguous. Returns last_index."""
    from eventlog import EventLog, LogError

    lost = 0
    if not acks:
        # Killed while creating the log, before anything was acknowledged: a reader may
        # refuse the half-made directory (the next writer completes it), never more.
        try:
            EventLog.open(path, readonly=True).close()
        except LogError:
            return 0
    with EventLog.open(path, readonly=True) as log:
        report = log.verify()
        assert report.ok, str(report)
        entries = {e.index: e for e in log.entries()}
        assert sorted(entries) == list(range(log.first_index, log.last_index + 1))
        for index, entry in entries.items():
            # (b) for a bare log: the log prefix is exactly what the writer sent.
            assert entry.payload == log_payload(index), f"entry {index} differs from what was appended"
        for term, index in acks:
            if index not in entries or entries[index].term != term:
                lost += 1
        last = log.last_index
    if tally is not None:
        tally.acked_checked += len(acks)
        tally.acked.update(acks)
        tally.lost += lost
    assert lost == 0, f"{lost} acknowledged entries lost"
    return last
