"""A directory as a replica's object store (``file:///abs/dir``): FileObjectStore."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import uuid
from pathlib import Path

from ..jsonfile import write_all_and_sync
from .capped import CappedReader, read_all
from .errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReplicaDamageError,
    ReplicaUnavailableError,
)
from .store import _PART, ObjectReader, ObjectStore, check_key, check_prefix, content_etag


class FileObjectStore(ObjectStore):
    """A directory as an object store (``file:///abs/dir``), e.g. on a shared filesystem.

    Layout: the object for key ``a/b/c`` is the file ``dir/a/b/c``; ``dir/.tmp/`` holds
    objects being written and ``dir/.lock`` serialises conditional replaces (flock).
    Creation writes a temp file, fsyncs it, then hard-links it to its name (link() fails
    if the name exists, atomically, so a reader sees the whole object or nothing and two
    creators cannot both win); the parent directory is fsynced after. Where the filesystem
    has no hard links, creation falls back to rename under the lock. Replace renames over
    the name under the lock after comparing the current content's etag. Paths are walked
    with O_NOFOLLOW from the store's directory: a symlink or non-regular file where an
    object or a key's directory should be is ReplicaDamageError, never followed or opened
    for blocking I/O.
    """

    def __init__(self, directory: str | os.PathLike, url: str | None = None, *, readonly: bool = False):
        """Open the directory replica at `directory` (absolute). A writer (readonly False)
        creates the directory and its ``.tmp/`` when missing. A reader (readonly True) creates
        nothing: a missing directory is ReplicaUnavailableError naming it (a typo in the URL
        must not leave a directory behind), and every write raises ValueError."""
        path = Path(directory)
        if not path.is_absolute():
            raise ValueError(f"file replica directory must be absolute, got {str(directory)!r}")
        self.root = path
        self.url = url or path.as_uri()
        self.readonly = readonly
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
                (path / ".tmp").mkdir(exist_ok=True)
            self._root_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError as e:
            raise ReplicaUnavailableError(self.url, f"there is no directory {str(path)!r} (nothing was ever "
                                                    "shipped there: check the URL)") from e
        except OSError as e:
            raise ReplicaUnavailableError(self.url, f"cannot open directory {str(path)!r}: {e.strerror or e}") from e
        self._closed = False

    # -- paths ---------------------------------------------------------------------------
    def _parent_fd(self, key: str, create: bool) -> tuple[int | None, str]:
        """An fd of the directory holding `key` (caller closes it; None when it does not exist
        and create is False) and the key's last part. Never follows a symlink."""
        parts = key.split("/")
        fd = os.dup(self._root_fd)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None, parts[-1]
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        os.fsync(fd)  # the new directory's entry must survive as long as the object below it
                    except FileExistsError:
                        pass  # a concurrent writer made it
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ReplicaDamageError(key, f"{'/'.join(parts[:i + 1])!r} is not a plain directory",
                                                 self.url) from None
                    raise
                os.close(fd)
                fd = nxt
            return fd, parts[-1]
        except BaseException:
            os.close(fd)
            raise

    def _write_temp(self, data) -> str:
        name = f"{uuid.uuid4().hex}.tmp"
        fd = os.open(f".tmp/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=self._root_fd)
        try:
            write_all_and_sync(fd, data)
        finally:
            os.close(fd)
        return name

    def _drop_temp(self, name: str) -> None:
        try:
            os.unlink(f".tmp/{name}", dir_fd=self._root_fd)
        except FileNotFoundError:
            pass

    def _lock(self) -> int:
        fd = os.open(".lock", os.O_RDWR | os.O_CREAT, 0o644, dir_fd=self._root_fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _os_error(self, key: str, e: OSError):
        if isinstance(e, ReplicaDamageError):
            return e
        if e.errno in (errno.EISDIR, errno.ENOTDIR, errno.ELOOP):
            return ReplicaDamageError(key, f"not a plain object ({e.strerror})", self.url)
        return ReplicaUnavailableError(self.url, f"{e.strerror or e}", key)

    def _check_open(self, write: bool = False):
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if write and self.readonly:
            raise ValueError(f"{self!r} was opened read-only: it writes and deletes nothing")

    # -- interface -----------------------------------------------------------------------
    def put_if_absent(self, key: str, data: bytes) -> bool:
        check_key(key)
        self._check_open(write=True)
        try:
            return self._create(key, data)
        except OSError as e:
            raise self._os_error(key, e) from e

    def _create(self, key: str, data) -> bool:
        tmp = self._write_temp(data)
        try:
            dfd, name = self._parent_fd(key, create=True)
            try:
                try:
                    os.link(f".tmp/{tmp}", name, src_dir_fd=self._root_fd, dst_dir_fd=dfd,
                            follow_symlinks=False)
                except FileExistsError:
                    return False
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                        raise
                    if not self._create_locked(tmp, dfd, name):  # no hard links on this filesystem
                        return False
                os.fsync(dfd)
                return True
            finally:
                os.close(dfd)
        finally:
            self._drop_temp(tmp)

    def _create_locked(self, tmp: str, dfd: int, name: str) -> bool:
        lock = self._lock()
        try:
            try:
                os.lstat(name, dir_fd=dfd)
                return False
            except FileNotFoundError:
                os.rename(f".tmp/{tmp}", name, src_dir_fd=self._root_fd, dst_dir_fd=dfd)
                return True
        finally:
            os.close(lock)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        check_key(key)
        self._check_open(write=True)
        new = content_etag(data)
        try:
            if etag is None:
                if not self._create(key, data):
                    raise PreconditionFailedError(key, self.url, "the object exists (create-only write)")
                return new
            lock = self._lock()
            try:
                try:
                    _, current = self._read(key, None)
                except ObjectNotFoundError:
                    raise PreconditionFailedError(key, self.url, f"the object is missing (expected etag {etag})") from None
                if current != etag:
                    raise PreconditionFailedError(key, self.url, f"etag is {current}, expected {etag}")
                tmp = self._write_temp(data)
                try:
                    dfd, name = self._parent_fd(key, create=True)
                    try:
                        os.rename(f".tmp/{tmp}", name, src_dir_fd=self._root_fd, dst_dir_fd=dfd)
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
                finally:
                    self._drop_temp(tmp)
            finally:
                os.close(lock)
            return new
        except OSError as e:
            raise self._os_error(key, e) from e

    def get(self, key: str, limit: int) -> tuple[bytes, str]:
        check_key(key)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        try:
            return self._read(key, limit)
        except OSError as e:
            raise self._os_error(key, e) from e

    def _open_object(self, key: str) -> tuple[int, int]:
        """(fd, size) of the regular file holding `key`; the caller closes fd."""
        dfd, name = self._parent_fd(key, create=False)
        if dfd is None:
            raise ObjectNotFoundError(key, self.url)
        try:
            try:
                # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: never a symlink.
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
            except FileNotFoundError:
                raise ObjectNotFoundError(key, self.url) from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ReplicaDamageError(key, "is a symbolic link, not an object", self.url) from None
                raise
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ReplicaDamageError(key, f"is not a regular file (mode {stat.filemode(st.st_mode)})", self.url)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def _read(self, key: str, limit: int | None) -> tuple[bytes, str]:
        """(data, etag) of `key`, at most `limit` bytes (None: any size; head.json under the lock)."""
        with self._reader(key, limit) as reader:
            data = read_all(reader)
        return data, content_etag(data)

    def _reader(self, key: str, limit: int | None) -> CappedReader:
        fd, size = self._open_object(key)
        if limit is not None and size > limit:
            os.close(fd)
            raise ObjectTooLargeError(key, limit, self.url)  # refused by its size, unread

        def source(n: int) -> bytes:
            try:
                return os.read(fd, n)
            except OSError as e:
                raise self._os_error(key, e) from e

        return CappedReader(key, size, limit, self.url, source, lambda: os.close(fd))

    def open_reader(self, key: str, limit: int) -> ObjectReader:
        check_key(key)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        try:
            return self._reader(key, limit)
        except OSError as e:
            raise self._os_error(key, e) from e

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        self._check_open()
        out: list[str] = []
        try:
            # From the root, descending only into directories that can hold a match and never
            # through a symlink (a symlinked directory on the way is not followed, so not listed).
            self._walk(self.root, "", prefix, out)
        except OSError as e:
            raise ReplicaUnavailableError(self.url, f"cannot list {prefix!r}: {e.strerror or e}") from e
        out.sort()
        return out

    def _walk(self, directory: Path, rel: str, prefix: str, out: list[str]) -> None:
        with os.scandir(directory) as it:
            for entry in it:
                if not _PART.fullmatch(entry.name):
                    continue  # .tmp, .lock and names no writer could have made
                key = rel + entry.name
                if prefix.startswith(key + "/") and not entry.is_dir(follow_symlinks=False):
                    # A directory the listing must descend through is a symlink (or a file): never
                    # followed, and not "no objects" either, which would hide what a writer stored.
                    what = "a symbolic link" if entry.is_symlink() else "not a directory"
                    raise ReplicaDamageError(key, f"is {what} where the replica's {key}/ directory belongs "
                                                  "(unsafe: not followed)", self.url)
                if entry.is_dir(follow_symlinks=False):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        self._walk(Path(entry.path), key + "/", prefix, out)
                elif key.startswith(prefix):
                    out.append(key)  # symlinks and special files too: get() reports them as damage

    def delete(self, key: str) -> None:
        check_key(key)
        self._check_open(write=True)
        try:
            dfd, name = self._parent_fd(key, create=False)
            if dfd is None:
                return
            try:
                os.unlink(name, dir_fd=dfd)
                os.fsync(dfd)
            except FileNotFoundError:
                pass
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._os_error(key, e) from e

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._root_fd)
