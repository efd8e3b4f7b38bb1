"""Writing a new file around the page cache (O_DIRECT) through aligned staging windows.

Why: a large buffered save pays for the copy into the page cache (page allocation,
dirty accounting, writeback of every page) in CPU, which a busy machine lacks: on this
project's machine (ext4 on a virtio disk), 256 MiB with `dd bs=8M conv=fsync` took
0.78 s (0.64 s system CPU) at a busy moment, with `oflag=direct` 0.18 s (0.02 s system);
on an idle one both took 0.18-0.31 s (buffered 0.07-0.15 s system, direct 0.07-0.09 s).
So a direct save costs about half the CPU and varies less, but the disk's writeback
from the page cache can go deeper than our windows in flight (see commit.DIRECT_AFTER
for where each wins). O_DIRECT needs
every write's file offset, length and memory address aligned (ALIGN covers the logical
block size of every common device), which a pack's bytes are not (a chunk file starts
wherever the previous one ended), so `WindowedWriter` stages them:

1. Any number of threads call `write(parts, offset)` for disjoint byte ranges, in any
   order; each range is copied (ctypes.memmove, which releases the GIL, so threads copy
   in parallel) into the staging window(s) of WINDOW bytes that cover it. Windows get
   buffers in file order from a fixed set of WINDOWS (a writer thread far ahead waits
   for a buffer; it never holds one another thread needs: see `_slot`).
2. A window whose WINDOW bytes are all copied is handed to the writer's own threads
   (WRITERS), one of which allocates its blocks and writes it with one aligned
   `os.pwrite` (the GIL is released while the device works) and gives the buffer back,
   so the disk writes several windows while the callers hash and copy the next ones.
3. `finish(end)` pads the last, partial window with zeros to ALIGN, writes it, waits
   for every write, and truncates the file to `end`. Durability is still the caller's
   fsync: it persists the size and the extents and flushes the device's cache.

Where the filesystem refuses O_DIRECT (`enable_direct` returns False: EINVAL from
fcntl) the caller writes as before; where it is accepted but the first write is refused
with EINVAL (some stacked filesystems, a device with a larger logical block), the
descriptor drops O_DIRECT and the same windows are written through the page cache, so
the file's bytes are the same either way.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections import deque

ALIGN = 4096
# Window size, count (the staging memory a store keeps: 48 MiB) and writer threads,
# chosen by interleaved A/B saves in one process at load 2-3 (per-round median ratios
# against 4 MiB x 8 with 2 writers): 2 MiB x 24 with 6 writers 0.85 at 128 MiB and 0.91
# at 256 MiB, 2 MiB x 32 with 8 writers 0.89 at 256 MiB, 2 MiB x 16 with 4 writers 1.05.
# The disk takes more bytes in flight well (a raw 256 MiB direct write + fsync: 194 ms
# with two 4 MiB writes in flight, 164-167 ms with four or eight), and the windows let
# the workers' copies run ahead of it.
WINDOW = 2 << 20
WINDOWS = 24
WRITERS = 6
# Before a window is written, its blocks are allocated (fallocate, up to the end of
# the bytes given so far: never past the file's final size, so nothing is freed, and
# discarded, afterwards): ext4 serves a direct write past the end of the file, or into
# a hole, under the inode lock held exclusively until the I/O is done, and one into
# allocated blocks under a shared lock, so the writer threads overlap. Where fallocate
# is not supported the file is grown this far past the window instead (ftruncate: a
# hole, nothing allocated), which at least spares each write the extending path.
GROW_AHEAD = 64 << 20


def _load_fallocate():
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


class StagingBuffers:
    """Page-aligned memory for the windows of one WindowedWriter at a time, kept for the
    next one: a new mapping costs a page fault per 4 KiB on its first use (about 20 ms
    for 32 MiB here), on every save. The memory stays mapped until the owner calls
    `release` (a store's close). Thread-safe; `take` makes a new mapping when the kept
    one is lent out."""

    def __init__(self, window: int | None = None, windows: int | None = None):
        window = WINDOW if window is None else window
        windows = WINDOWS if windows is None else windows
        if window % ALIGN or window <= 0 or windows < 2:
            # Two buffers at least: one may wait for the bytes of a range not yet given.
            raise ValueError(f"window must be a positive multiple of {ALIGN} and windows >= 2, "
                             f"got {window} and {windows}")
        self.window, self.windows = window, windows
        self._lock = threading.Lock()
        self._kept: mmap.mmap | None = None

    def take(self) -> mmap.mmap:
        """`windows * window` bytes of page-aligned memory (as O_DIRECT needs), for one writer."""
        with self._lock:
            kept, self._kept = self._kept, None
        return kept if kept is not None else mmap.mmap(-1, self.window * self.windows)

    def give_back(self, memory: mmap.mmap) -> None:
        """Keep `memory` for the next `take` (once nothing reads or writes it any more)."""
        with self._lock:
            self._kept = memory

    def release(self) -> None:
        """Unmap the kept memory now (its owner closes); memory lent out is not touched and
        is kept when given back. Idempotent; a later `take` maps anew."""
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None:
            try:
                kept.close()
            except BufferError:  # still exported somewhere: unmapped once that goes
                pass


def enable_direct(fd: int) -> bool:
    """Set O_DIRECT on the open descriptor `fd`; False (nothing changed) where the
    filesystem refuses it (EINVAL) or the platform has no O_DIRECT. Other errors raise."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    return True


def disable_direct(fd: int) -> None:
    """Clear O_DIRECT on `fd` (later writes go through the page cache)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~getattr(os, "O_DIRECT", 0))


class WindowedWriter:
    """Writes a new file's bytes [0, end), each exactly once, through aligned windows.

    Edge cases first: `write` of no bytes does nothing; a byte written into a window
    that is already full (or written), or a gap left at `finish`, raises RuntimeError (a
    caller bug, never silent; two writes of one byte inside a window still filling are
    not seen); after a failed window write every later `write` and `finish` raise that
    error (nothing is retried: the file's content is unknown, the caller deletes it);
    `close` is idempotent and drops what was not yet written, and a `write` or `finish`
    after it raises RuntimeError (its staging memory is no longer its own). `direct` says whether
    O_DIRECT is still in use (False after the first write was refused and the windows
    went through the page cache).

    Ranges must start in file order: a `write` may wait for a buffer until the windows
    before it are written, so every range before it must already be given (or be given
    by a thread that is not waiting on this one). A PackWriter's ranges are: each
    append reserves its offset, in order, and writes at once. (Out of order needs a
    buffer per window in between.)

    Threads: `write` from any number of threads; `finish` and `close` on one thread,
    after every `write` has returned; WRITERS threads of the writer's own
    ("snapshots-direct", started by the first full window) write full windows in the
    order they fill.
    """

    def __init__(self, fd: int, buffers: StagingBuffers | None = None, direct: bool = True,
                 writers: int | None = None):
        self.direct = direct
        self._fd = fd
        self._staging = buffers if buffers is not None else StagingBuffers()
        self._size = self._staging.window
        self._buffers: mmap.mmap | None = self._staging.take()
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._buffers))
        self._cond = threading.Condition()
        self._free = list(range(self._staging.windows))
        self._size_lock = threading.Lock()  # guards the three fields below
        self._file_size = 0  # what the writer threads have allocated or grown the file to
        self._given = 0  # the end of the furthest range given to `write`
        self._allocate = _fallocate is not None  # False once fallocate is refused: grow with holes
        self._slots: dict[int, int] = {}  # window number -> buffer number
        self._filled: dict[int, int] = {}  # window number -> bytes copied into it
        self._next = 0  # the next window number to get a buffer (they get them in order)
        self._queue: deque[tuple[int, int, int]] = deque()  # (window, buffer, length) to write
        self._writing = 0  # windows taken by the writer thread and not yet written
        self._wrote_direct = False  # a write succeeded with O_DIRECT on
        self._error: BaseException | None = None
        self._stopping = False
        self._writers = WRITERS if writers is None else writers
        self._threads: list[threading.Thread] = []

    def write(self, parts: list[memoryview], offset: int) -> None:
        """Copy `parts` (byte buffers, in order) to the file's bytes from `offset` on.
        Returns once they are copied (not yet written); blocks while every buffer holds a
        window that is not yet full or not yet written. RuntimeError after `close`."""
        with self._size_lock:
            self._given = max(self._given, offset + sum(len(v) for v in parts))
        for view in parts:
            n = len(view)
            address = _address(view) if n else None
            done = 0
            while done < n:
                at = offset + done
                window, within = divmod(at, self._size)
                piece = min(self._size - within, n - done)
                buffer = self._slot(window)
                start = buffer * self._size + within
                if address is not None:
                    ctypes.memmove(self._base + start, address + done, piece)  # releases the GIL
                else:  # a read-only buffer (bytes): copied under the GIL
                    self._buffers[start:start + piece] = view[done:done + piece]
                self._copied(window, piece)
                done += piece
            offset += n

    def finish(self, end: int) -> None:
        """Write the last window (padded with zeros to ALIGN), wait for every window to be
        written, stop the writer thread and truncate the file to `end` bytes. Raises the
        first write error, or RuntimeError if any byte of [0, end) was never written.
        The writer thread is stopped whatever happens."""
        try:
            self._flush(end)
        finally:
            self.close()
        self._raise_if_failed()
        os.ftruncate(self._fd, end)  # the padding (and a hole grown ahead without fallocate)

    def _flush(self, end: int) -> None:
        with self._cond:
            self._raise_if_failed()
            if self._stopping:
                # Closed: the staging memory went back to its StagingBuffers (another
                # writer may be using it, or it may be unmapped) and no writer thread may
                # start, so padding the last window would write into memory that is no
                # longer ours and waiting for it to be written would never end.
                raise RuntimeError("finish after the windowed writer was closed")
            last, used = divmod(end, self._size)
            if used == 0:
                last, used = last - 1, self._size
            pending = {w: self._filled[w] for w in self._slots}
            if end and used < self._size:
                if pending != {last: used}:
                    raise RuntimeError(f"file bytes missing at finish({end}): windows {pending} of {self._size} bytes")
                buffer = self._slots.pop(last)
                del self._filled[last]
                length = -(-used // ALIGN) * ALIGN
                ctypes.memset(self._base + buffer * self._size + used, 0, length - used)
                self._queue.append((last, buffer, length))
                self._start_thread()
                self._cond.notify_all()
            elif pending or self._next * self._size < end:
                raise RuntimeError(f"file bytes missing at finish({end}): windows {pending} of {self._size} bytes")
            while (self._queue or self._writing) and self._error is None:
                self._cond.wait()

    def close(self) -> None:
        """Stop the writer threads after the windows they are writing (if any); windows
        not yet written are dropped, and the staging memory goes back to its
        StagingBuffers. Idempotent. Does not close the descriptor."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()
        with self._cond:
            memory, self._buffers = self._buffers, None
        if memory is not None:
            # `write` is documented to be over (no copy runs), and the threads are gone.
            self._staging.give_back(memory)

    # -- the windows -------------------------------------------------------------------

    def _slot(self, window: int) -> int:
        """The buffer of `window`, giving buffers to windows in file order as they free up.

        Why this cannot deadlock: callers copy their ranges front to back, so a caller
        waiting here for window w has copied its bytes in every window before w; the
        lowest window still filling therefore only lacks bytes of callers that are
        copying (or of a range not yet given, when it is the last window given a
        buffer: then another buffer is free), so it fills, is written and frees its
        buffer."""
        with self._cond:
            while True:
                self._raise_if_failed()
                if self._stopping:
                    raise RuntimeError("write after the windowed writer was closed")
                buffer = self._slots.get(window)
                if buffer is not None:
                    return buffer
                if window < self._next:
                    raise RuntimeError(f"file bytes at offset {window * self._size} written twice")
                if self._free:
                    self._slots[self._next] = self._free.pop()
                    self._filled[self._next] = 0
                    self._next += 1
                else:
                    self._cond.wait()

    def _copied(self, window: int, n: int) -> None:
        with self._cond:
            filled = self._filled[window] + n
            if filled > self._size:
                raise RuntimeError(f"file bytes in window at offset {window * self._size} written twice")
            if filled < self._size:
                self._filled[window] = filled
                return
            del self._filled[window]
            self._queue.append((window, self._slots.pop(window), self._size))
            self._start_thread()
            self._cond.notify_all()

    def _start_thread(self) -> None:  # under the lock
        if (len(self._threads) < min(self._writers, len(self._queue) + self._writing) and not self._stopping
                and self._error is None):
            thread = threading.Thread(target=self._run, name="snapshots-direct", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping and self._error is None:
                    self._cond.wait()
                if not self._queue or self._error is not None:
                    return  # stopped, or another window failed: the file is thrown away
                window, buffer, length = self._queue.popleft()
                self._writing += 1
            try:
                self._write_window(buffer, length, window * self._size)
            except BaseException as e:  # noqa: BLE001 - every caller raises it from here on
                with self._cond:
                    self._error = e
                    self._writing -= 1
                    self._cond.notify_all()
                return
            with self._cond:
                self._writing -= 1
                self._free.append(buffer)
                self._cond.notify_all()

    def _grow(self, end: int) -> None:
        """Make the file's first `end` bytes allocated blocks (up to the furthest byte
        given, aligned down; or, without fallocate, grow the file GROW_AHEAD past `end`),
        never shorter: a writer thread that went further meanwhile is not undone."""
        with self._size_lock:
            if end <= self._file_size:
                return
            if self._allocate:
                target = max(end, self._given // ALIGN * ALIGN)
                while True:
                    if _fallocate(self._fd, 0, self._file_size, target - self._file_size) == 0:
                        self._file_size = target
                        return
                    code = ctypes.get_errno()
                    # A signal with a handler (a trainer's SIGTERM, an itimer) arriving
                    # meanwhile: tmpfs and others give up with EINTR. A ctypes call gets
                    # no automatic retry (PEP 475 covers os.* only), so it is retried here;
                    # nothing was changed (or only blocks allocated, which a retry keeps).
                    if code != errno.EINTR:
                        break
                if code not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise OSError(code, f"fallocate: {os.strerror(code)}")
                self._allocate = False
            os.ftruncate(self._fd, end + GROW_AHEAD)
            self._file_size = end + GROW_AHEAD

    def _write_window(self, buffer: int, length: int, offset: int) -> None:
        self._grow(offset + length)
        view = memoryview(self._buffers)[buffer * self._size:buffer * self._size + length]
        retried = False
        short_unaligned = False  # the last direct write stopped short of the first boundary
        try:
            while len(view):
                direct = self.direct
                try:
                    k = os.pwrite(self._fd, view, offset)
                except OSError as e:
                    if e.errno != errno.EINVAL or self._wrote_direct or retried:
                        raise
                    # The filesystem took O_DIRECT at fcntl but refuses the write: the
                    # same bytes go through the page cache from here on. Another writer
                    # thread refused at the same time does the same, even when this one's
                    # retry has already succeeded (buffered): only a write that succeeded
                    # while O_DIRECT was on (`_wrote_direct`) shows the refusal means
                    # something else.
                    disable_direct(self._fd)
                    self.direct = False
                    retried = True
                    continue
                if k <= 0:
                    raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset}")
                if direct and self.direct:  # O_DIRECT was on before and after: a direct write
                    self._wrote_direct = True
                    if k % ALIGN:
                        # A short direct write (a device nearly full) that stops off the
                        # 4 KiB grid: going on from there would be an unaligned write, which
                        # O_DIRECT refuses with EINVAL, hiding the real cause. The bytes past
                        # the last boundary are written again, from there, with the rest:
                        # the same bytes, so rewriting them is harmless, and the next write
                        # reports what the device really says (ENOSPC).
                        k -= k % ALIGN
                        if not k:
                            if short_unaligned:
                                raise OSError(errno.EIO, f"O_DIRECT pwrite at offset {offset} wrote less than "
                                                         f"{ALIGN} bytes twice")
                            short_unaligned = True
                            continue
                short_unaligned = False
                offset += k
                view = view[k:]
        finally:
            view.release()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def _address(view: memoryview) -> int | None:
    """The address of a writable buffer's first byte; None for a read-only one."""
    if view.readonly:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))
