"""Segments read and checked ahead of their uploads: a shipping round's pipeline stage
between planning (sources.plan) and uploading (uploads.Uploads).

A catch-up round is read, check, upload for each segment in turn; checking an archive file
is decompressing it (segment_checks), CPU work that needs neither the shipper's thread nor
the uploads in flight. So up to AHEAD pieces are read and checked on worker threads while
the shipper's thread links the ones before them into the chain and hands them to the
uploads (the zstd decompressor and the file reads release the GIL): a check overlaps the
reads, the other check and the uploads' writes and fsyncs instead of waiting for them.
What a round may count does not change: every piece is still checked in full (or known
checked, sources.Verified) before it is linked, and pieces come out in plan order.

The log is read only on the shipper's thread: a piece sealed from the log is sealed there
when it is taken from the plan, by `log.sealed_segment`, which verifies every entry
against the chain as it copies it and says where the bytes end, so those bytes need no
second check; a worker reads and checks local archive files only.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterator

from eventlog import read_segment_file

from .sources import Piece, Verified

AHEAD = 2  # pieces read and checked at once (one per core here); memory: AHEAD + 1 segments, 16 MiB bodies


class _Job:
    """One piece being prepared on a worker thread: its bytes and bounds, or the error."""

    def __init__(self, piece: Piece):
        self.piece = piece
        self.data = None  # the segment's bytes, once read (a worker reads an archive file, S seals)
        self.bounds: tuple[int, int, int, int] | None = None
        self.error: BaseException | None = None
        self.gone = False  # the archive file vanished (a local merge replaced it): seal it instead
        self.finished = threading.Event()


class Prepared:
    """The pieces of `pieces`, in order, each with its bytes and `verified.bounds` of them.

    Call sequence (S: the shipper's thread, which owns this object; W: one daemon thread
    per archive-file piece, which reads that file and checks its bytes, touching nothing
    else):

    1. S: ``with Prepared(log, verified, pieces) as prepared:``.
    2. S: ``for piece, data, bounds in prepared:``: the next pieces are handed to W
       threads until AHEAD are being prepared, that piece among them (a piece sealed from
       the log is sealed on S first; and when S would wait for a W and the next piece is
       one to seal, S seals it meanwhile: AHEAD + 1 pieces at most). Each yield waits for
       that piece's W; its error (SegmentDamage, OSError, or the sealing's) is raised on S
       at its turn, after every earlier piece.
    3. S: leaving the block (the loop ended or broke) waits for the W threads still
       running, so nothing of the round is read or held afterwards.
    """

    def __init__(self, log, verified: Verified, pieces: list[Piece], ahead: int = AHEAD):
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 1:
            raise ValueError(f"ahead must be an int >= 1, got {ahead!r}")
        self._log = log
        self._verified = verified
        self._todo = deque(pieces)
        self._ahead = ahead
        self._running: deque[_Job] = deque()

    def __enter__(self) -> "Prepared":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for job in self._running:
            job.finished.wait()
        self._running.clear()

    def __iter__(self) -> Iterator[tuple[Piece, object, tuple[int, int, int, int]]]:
        while self._todo or self._running:
            while self._todo and len(self._running) < self._ahead:
                self._start(self._todo.popleft())
            job = self._running[0]
            if not job.finished.is_set() and self._todo and self._todo[0].path is None \
                    and len(self._running) <= self._ahead:
                # S would only wait for a worker here: it seals the next piece (from the log) now,
                # one piece beyond the window at most, instead of after this one is taken.
                self._start(self._todo.popleft())
            self._running.popleft()
            job.finished.wait()
            if job.gone:  # sealed here instead: the log is read on S only
                job.data, job.bounds = self._seal(job.piece)
            elif job.error is not None:
                raise job.error
            data, job.data = job.data, None
            yield job.piece, data, job.bounds

    def _start(self, piece: Piece) -> None:
        job = _Job(piece)
        self._running.append(job)
        if piece.path is None:
            try:
                job.data, job.bounds = self._seal(piece)
            except Exception as exc:  # noqa: BLE001 - raised at this piece's turn, after the ones before it
                job.error = exc
            job.finished.set()
            return
        threading.Thread(target=self._prepare, args=(job,), name="replay-replica-check", daemon=True).start()

    def _seal(self, piece: Piece) -> tuple[bytes, tuple[int, int, int, int]]:
        """The piece sealed from the log, on S, and its bounds as sealing verified every entry
        against the chain (`log.sealed_segment`): not decompressed again."""
        data, checked = self._log.sealed_segment(piece.first, piece.last)
        return data, (checked.first, checked.last, checked.prev_checksum, checked.last_checksum)

    def _prepare(self, job: _Job) -> None:
        try:
            try:
                job.data = read_segment_file(job.piece.path, job.piece.first, job.piece.last)
            except FileNotFoundError:
                job.gone = True
                return
            job.bounds = self._verified.bounds(job.data)
        except BaseException as exc:  # noqa: BLE001 - raised on the shipper's thread at this piece's turn
            job.error = exc
        finally:
            job.finished.set()
