"""Object stores a journal replicates to: one interface, a directory backend and an S3 backend.

An ``ObjectStore`` is one bucket/prefix or one directory. Keys are ``"a/b/c"`` strings of
parts made of ``[A-Za-z0-9._-]`` that do not start with ``.`` (so ``..``, ``.``, hidden
names, empty parts and absolute paths are refused with ValueError naming the key); the
same rule holds on every backend, so a replica's layout is portable between them.

Etags: an opaque string that changes when the object's bytes change. The directory
backend uses the xxh3-128 hex digest of the content; S3 uses the server's ETag. Both
are content-derived for a plain put, so writing the very same bytes again keeps the
etag: callers that fence with ``put_if_match`` (head.json) put something unique in the
content (term, owner, time).

The S3 backend imports its client library only when an ``s3://`` store is opened, so the
optional extra (``torch-eventlog[s3]``) is needed only by those who use it.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import os
import re
import stat
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import xxhash

from . import s3options
from .errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReplicaDamageError,
    ReplicaUnavailableError,
)

_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")
MAX_KEY = 1024


def check_key(key: str) -> str:
    """Return `key` if it is a valid object key; ValueError naming it otherwise.

    Refused: non-strings, "", a leading or trailing "/", empty parts ("a//b"), parts that
    start with "." (".", "..", hidden names), characters outside [A-Za-z0-9._-] and keys
    over 1024 characters.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ValueError(f"invalid object key {key!r}: must be a non-empty string of at most {MAX_KEY} characters")
    for part in key.split("/"):
        if not _PART.fullmatch(part):
            raise ValueError(f"invalid object key {key!r}: part {part!r} must match [A-Za-z0-9_-][A-Za-z0-9._-]* "
                             "(no empty parts, no leading '/' or '.', no '..')")
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it could begin a valid key ("" lists everything); ValueError otherwise."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or prefix.startswith("/") \
            or "//" in prefix or any(p.startswith(".") for p in prefix.split("/")[:-1]) \
            or prefix.split("/")[-1].startswith("."):
        raise ValueError(f"invalid key prefix {prefix!r}: must be the beginning of a valid object key")
    return prefix


def content_etag(data) -> str:
    """The directory backend's etag: xxh3-128 of the bytes, 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


class ObjectStore(abc.ABC):
    """One bucket/prefix or one directory of immutable-by-default objects. Thread-safe.

    Every method validates its key first (ValueError naming it) and raises
    ReplicaUnavailableError when the store cannot be reached.
    """

    url: str

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` holding `data` unless it exists: True if created, False if it existed
        (the existing object is never overwritten, whatever it holds). A reader never sees a
        partial object; two concurrent calls for one key: exactly one returns True."""

    @abc.abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Conditional write; returns the new etag.

        etag None: create only; PreconditionFailedError if `key` exists. Otherwise replace
        only if the object's current etag equals `etag`; PreconditionFailedError if it does
        not or if the object is missing. Of concurrent writers with the same etag at most one
        succeeds. A write whose answer was lost (ReplicaUnavailableError, or a client retry of
        a write that had landed, which then reads as PreconditionFailedError) may or may not
        have happened: a caller that must know reads the object back and compares content."""

    @abc.abstractmethod
    def get(self, key: str, limit: int) -> tuple[bytes, str]:
        """(data, etag) of `key`. ObjectNotFoundError if missing; ObjectTooLargeError if it holds
        more than `limit` bytes (never reads more than limit + 1); ReplicaDamageError if the
        object is not a plain object (directory backend: a symlink, FIFO, device, directory)."""

    @abc.abstractmethod
    def open_reader(self, key: str, limit: int) -> "ObjectReader":
        """A reader of `key`'s bytes in order, for objects too large to hold twice (segments):
        its `size` is known before any byte is read, so a caller checks a header against it
        and streams the rest (close it, or use it as a context manager). Errors as `get`:
        ObjectNotFoundError if missing, ReplicaDamageError if not a plain object,
        ObjectTooLargeError at once if `size` > `limit` (no body byte read) and from `read`
        if more than `limit` bytes arrive (a server sending more than it declared)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys that start with `prefix` (a plain string prefix, "" for all), sorted; [] if none.
        Names that are not valid keys are not listed (S3: a foreign key obstore cannot even
        parse, with a "..", "." or empty part, makes the listing ReplicaDamageError naming it)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is fine (no error)."""

    def close(self) -> None:
        """Release the client; idempotent. The store may not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}({self.url!r})"


class ObjectReader(abc.ABC):
    """One object's bytes, read in order (ObjectStore.open_reader). `key`, `size` (bytes the
    object holds, as the store states it before the body is read)."""

    key: str
    size: int

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """At most `n` (> 0) bytes, b"" at the end; ObjectTooLargeError past the reader's limit."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file or connection; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
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
        fd, size = self._open_object(key)
        try:
            if limit is not None and size > limit:
                raise ObjectTooLargeError(key, limit, self.url)  # refused by its size, unread
            # Reads of the size fstat gave (plus one byte, to see a file that grew since): the
            # kernel fills the first in one call up to ~2 GiB, so the object is never joined
            # from pieces into a second copy. Capped at limit + 1 bytes whatever the file does.
            want = (size if limit is None else min(size, limit)) + 1
            cap = None if limit is None else limit + 1
            pieces, total = [], 0
            while True:
                n = want - total if total < want else 1 << 20
                if cap is not None:
                    n = min(n, cap - total)
                b = os.read(fd, n) if n > 0 else b""
                if not b:
                    break
                pieces.append(b)
                total += len(b)
            if limit is not None and total > limit:
                raise ObjectTooLargeError(key, limit, self.url)
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        finally:
            os.close(fd)
        return data, content_etag(data)

    def open_reader(self, key: str, limit: int) -> ObjectReader:
        check_key(key)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        try:
            fd, size = self._open_object(key)
        except OSError as e:
            raise self._os_error(key, e) from e
        if size > limit:
            os.close(fd)
            raise ObjectTooLargeError(key, limit, self.url)
        return _FileReader(self, key, fd, size, limit)

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


class _FileReader(ObjectReader):
    """An open object file, read in order with a byte cap."""

    def __init__(self, store: FileObjectStore, key: str, fd: int, size: int, limit: int):
        self._store, self.key, self._fd, self.size, self._limit, self._read = store, key, fd, size, limit, 0

    def read(self, n: int) -> bytes:
        if self._fd is None:
            raise ValueError(f"reader of {self.key!r} is closed")
        try:
            data = os.read(self._fd, min(n, self._limit + 1 - self._read))
        except OSError as e:
            raise self._store._os_error(self.key, e) from e
        self._read += len(data)
        if self._read > self._limit:
            raise ObjectTooLargeError(self.key, self._limit, self._store.url)
        return data

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def open_store(url: str, options: dict | None = None, *, readonly: bool = False) -> ObjectStore:
    """The store a replica URL names (an ObjectStore given instead of a URL is returned as is).

    ``file:///abs/dir``: a FileObjectStore (options unused): a writer's (`readonly` False)
    directory is created if missing; a reader's (`readonly` True: restore, the CLI) is
    never created, and a missing one is ReplicaUnavailableError naming it.
    ``s3://bucket/prefix``: an S3ObjectStore (nothing is created on open either way);
    options: endpoint_url, region, access_key_id, secret_access_key, session_token,
    allow_http, connect_timeout, request_timeout, max_retries, retry_timeout, or their
    s3fs/boto3 spellings (`replay.replica.s3options`); what is not given comes from the
    standard AWS_* environment variables. ValueError for any other scheme, a relative or
    remote file URL, or unknown options.
    """
    if isinstance(url, ObjectStore):
        return url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"unsupported replica URL {url!r}: a file URL must name a local absolute path (file:///dir)")
        if parsed.query or parsed.fragment:
            raise ValueError(f"unsupported replica URL {url!r}: a file URL takes no query or fragment")
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise ValueError(f"unsupported replica URL {url!r}: the path must be absolute")
        if options:
            raise ValueError(f"unknown options for {url!r}: {sorted(options)} (a file replica takes none)")
        return FileObjectStore(path, url=url, readonly=readonly)
    if parsed.scheme == "s3":
        return S3ObjectStore.from_url(url, options or {})
    raise ValueError(f"unsupported replica URL {url!r}: use file:///absolute/dir or s3://bucket/prefix")


class S3ObjectStore(ObjectStore):
    """An S3-compatible bucket/prefix (``s3://bucket/prefix``) through obstore (Rust object_store).

    Why obstore: against moto's server both obstore and boto3 do conditional PutObject
    (If-None-Match: * and If-Match: etag, 412 enforced by moto 5.2), and obstore was the
    faster client in the same run (bench/replica_client.py: 4 KiB puts ~5 ms vs ~9-10 ms,
    1 MiB and 16 MiB puts 10-30 % faster) while holding no GIL during transfers, which
    matters for a shipper thread beside a training loop.

    Puts are single PutObject requests (no multipart: a conditional multipart upload is
    not portable across S3-compatible servers). obstore retries connection errors, 5xx
    and timeouts of safe requests itself (max_retries, retry_timeout); what still fails is
    ReplicaUnavailableError. A conditional put whose first attempt reached the server but
    whose answer was lost can be retried by the client and then come back as "existed" /
    PreconditionFailedError although it was this writer's: a caller that must know (a
    head.json takeover) reads the object back and compares its content.
    """

    OPTIONS = s3options.OPTIONS

    def __init__(self, bucket: str, prefix: str = "", options: dict | None = None, url: str | None = None):
        """Options (`replay.replica.s3options`): ours or their s3fs/boto3 spellings; whatever
        is not given comes from the standard ``AWS_*`` environment variables. ValueError for
        an unknown option (the message lists the accepted ones)."""
        where = url or f"s3://{bucket}/{prefix}".rstrip("/")
        config, client, retry = s3options.obstore_settings(options, os.environ, where)
        if prefix:
            check_key(prefix)
        try:
            import obstore
            from obstore.store import S3Store
        except ImportError as e:
            raise ImportError("s3:// replicas need the obstore package: pip install 'torch-eventlog[s3]'") from e

        self._ob = obstore
        self.url = where
        try:
            self._s3 = S3Store(bucket, prefix=prefix or None, client_options=client, retry_config=retry, **config)
        except obstore.exceptions.BaseError as e:
            raise ValueError(f"cannot configure {self.url}: {_first_line(e)}") from e
        self._closed = False

    @classmethod
    def from_url(cls, url: str, options: dict) -> "S3ObjectStore":
        """``s3://bucket`` or ``s3://bucket/prefix`` (the prefix is a valid key; no query)."""
        parsed = urlparse(url)
        if not parsed.netloc or parsed.query or parsed.fragment or parsed.params:
            raise ValueError(f"unsupported replica URL {url!r}: use s3://bucket/prefix")
        return cls(parsed.netloc, parsed.path.strip("/"), options, url=url.rstrip("/"))

    # -- errors ---------------------------------------------------------------------------
    def _error(self, key: str | None, e: Exception) -> Exception:
        ex = self._ob.exceptions
        # obstore raises its own classes for most statuses but the builtin FileNotFoundError for 404.
        if isinstance(e, (ex.AlreadyExistsError, ex.PreconditionError, FileExistsError)):
            return PreconditionFailedError(key, self.url, _first_line(e))
        if isinstance(e, (ex.NotFoundError, FileNotFoundError)):
            return ObjectNotFoundError(key, self.url)
        if isinstance(e, (ex.PermissionDeniedError, ex.UnauthenticatedError)):
            return ReplicaUnavailableError(self.url, f"access refused: {_first_line(e)}", key)
        return ReplicaUnavailableError(self.url, _first_line(e), key)

    def _check_open(self):
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    # -- interface ------------------------------------------------------------------------
    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._put(key, data, "create")
            return True
        except PreconditionFailedError:
            return False

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        return self._put(key, data, "create" if etag is None else {"e_tag": etag})

    def _put(self, key: str, data, mode) -> str:
        check_key(key)
        self._check_open()
        try:
            result = self._ob.put(self._s3, key, data, mode=mode, use_multipart=False)
        except (self._ob.exceptions.BaseError, OSError) as e:
            raise self._error(key, e) from None
        etag = result.get("e_tag")
        if not etag:
            raise ReplicaUnavailableError(self.url, "the server returned no ETag (conditional writes unsupported)", key)
        return etag

    def get(self, key: str, limit: int) -> tuple[bytes, str]:
        check_key(key)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        try:
            result = self._ob.get(self._s3, key)
            meta = result.meta
            if meta["size"] > limit:
                raise ObjectTooLargeError(key, limit, self.url)  # the body is never read
            buf = bytearray()
            for chunk in result.stream(min_chunk_size=min(max(limit, 1), 8 << 20)):
                buf += chunk
                if len(buf) > limit:  # a server that sends more than it declared
                    raise ObjectTooLargeError(key, limit, self.url)
        except (self._ob.exceptions.BaseError, OSError) as e:
            raise self._error(key, e) from None
        return bytes(buf), meta["e_tag"] or ""

    def open_reader(self, key: str, limit: int) -> ObjectReader:
        check_key(key)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        try:
            result = self._ob.get(self._s3, key)
            size = result.meta["size"]
        except (self._ob.exceptions.BaseError, OSError) as e:
            raise self._error(key, e) from None
        if size > limit:
            raise ObjectTooLargeError(key, limit, self.url)  # the body is never read
        # Small pieces: a caller checks a header from the first bytes before the body arrives.
        return _S3Reader(self, key, size, limit, result.stream(min_chunk_size=256 << 10))

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        self._check_open()
        # object_store lists by path segments ("a/b" lists under a/b/), so list the
        # directory part of the prefix and filter by the full string.
        head = prefix.rpartition("/")[0]
        out = []
        try:
            for batch in self._ob.list(self._s3, prefix=head or None, chunk_size=1000):
                for meta in batch:
                    path = meta["path"]
                    if path.startswith(prefix) and _valid_key(path):
                        out.append(path)
        except self._ob.exceptions.InvalidPathError as e:
            # object_store refuses the whole listing when the bucket holds a key it cannot
            # parse ("..", ".", "//" parts): no writer of ours makes one, so it is damage.
            found = re.search(r'[Pp]ath "([^"]*)"', str(e))
            raise ReplicaDamageError(found.group(1) if found else prefix,
                                     f"a foreign object whose key cannot be listed ({_first_line(e, 160)})",
                                     self.url) from None
        except (self._ob.exceptions.BaseError, OSError) as e:
            raise self._error(None, e) from None
        out.sort()
        return out

    def delete(self, key: str) -> None:
        check_key(key)
        self._check_open()
        try:
            self._ob.delete(self._s3, key)
        except (self._ob.exceptions.NotFoundError, FileNotFoundError):
            pass
        except (self._ob.exceptions.BaseError, OSError) as e:
            raise self._error(key, e) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._s3 = None


class _S3Reader(ObjectReader):
    """The body of one GET, read in order with a byte cap."""

    def __init__(self, store: S3ObjectStore, key: str, size: int, limit: int, stream):
        self._store, self.key, self.size, self._limit = store, key, size, limit
        self._stream, self._pending, self._read = stream, memoryview(b""), 0

    def read(self, n: int) -> bytes:
        if self._stream is None:
            raise ValueError(f"reader of {self.key!r} is closed")
        if not self._pending:
            try:
                self._pending = memoryview(next(self._stream))
            except StopIteration:
                return b""
            except (self._store._ob.exceptions.BaseError, OSError) as e:
                raise self._store._error(self.key, e) from None
            self._read += len(self._pending)
            if self._read > self._limit:  # a server that sends more than it declared
                raise ObjectTooLargeError(self.key, self._limit, self._store.url)
        out, self._pending = bytes(self._pending[:n]), self._pending[n:]
        return out

    def close(self) -> None:
        self._stream, self._pending = None, memoryview(b"")


def _valid_key(key: str) -> bool:
    try:
        check_key(key)
        return True
    except ValueError:
        return False


def _first_line(e: BaseException, limit: int = 300) -> str:
    """obstore's messages run over many lines (the whole retry chain); keep the gist."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
