"""Opening a file anyone may have replaced: no symlinks, FIFOs or devices, a bounded size.

The archive's segments are read with `open_regular`: the last path component is opened
with O_NOFOLLOW (a symlink is refused, never followed), O_NONBLOCK (a FIFO opens at once
instead of waiting for a writer that never comes) and O_CLOEXEC, and the descriptor is
checked with fstat to be a regular file no larger than the caller's bound before a byte
is read. The check is on the descriptor, so nothing can be swapped in between.
Why a copy: snapshots/safefile.py holds the same rule, and eventlog and snapshots may not
import each other (DESIGN §2), so each keeps its own; tests/test_twin_modules.py runs one
test over both so they cannot drift.
"""

from __future__ import annotations

import errno
import os
import stat

# The shared kind (one class in every package; it is damage): torch_eventlog.errors.
from torch_eventlog.errors import UnsafeFileError

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def open_regular(path: str, limit: int) -> tuple[int, int]:
    """(descriptor, size) of the regular file at `path`, at most `limit` bytes long.

    FileNotFoundError if nothing is there; UnsafeFileError for a symlink (even to a
    regular file), anything that is not a regular file, or a larger file (refused by its
    size, unread). Other OSErrors (EIO, EACCES) propagate. The caller closes the descriptor.
    """
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError("is a symbolic link (never followed)") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise UnsafeFileError(f"is not a regular file ({os.strerror(exc.errno)})") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise UnsafeFileError(f"is {kind}, not a regular file")
        if st.st_size > limit:
            raise UnsafeFileError(f"is {st.st_size} bytes, more than the {limit} its header allows")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size
