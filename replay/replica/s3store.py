"""An S3-compatible bucket/prefix as a replica's object store (``s3://bucket/prefix``): S3ObjectStore.

The client library (obstore) is imported only when such a store is opened, so the optional
extra (``torch-eventlog[s3]``) is needed only by those who use it.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlparse

from . import s3options
from .capped import CappedReader, read_all
from .errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReplicaDamageError,
    ReplicaUnavailableError,
)
from .store import ObjectReader, ObjectStore, _valid_key, check_key, check_prefix


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
        with self._reader(key, limit, min(max(limit, 1), 8 << 20)) as reader:
            return read_all(reader), reader.etag

    def open_reader(self, key: str, limit: int) -> ObjectReader:
        # Small pieces: a caller checks a header from the first bytes before the body arrives.
        return self._reader(key, limit, 256 << 10)

    def _reader(self, key: str, limit: int, piece: int) -> "_S3Reader":
        check_key(key)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        try:
            result = self._ob.get(self._s3, key)
            meta = result.meta
        except (self._ob.exceptions.BaseError, OSError) as e:
            raise self._error(key, e) from None
        if meta["size"] > limit:
            raise ObjectTooLargeError(key, limit, self.url)  # the body is never read
        return _S3Reader(self, key, meta["size"], limit, result.stream(min_chunk_size=piece), meta["e_tag"] or "")

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


class _S3Reader(CappedReader):
    """The body of one GET, read in order with the byte cap (capped.py); `etag` is the GET's."""

    def __init__(self, store: S3ObjectStore, key: str, size: int, limit: int, stream, etag: str):
        self._store, self._stream, self._pending, self.etag = store, stream, memoryview(b""), etag
        super().__init__(key, size, limit, store.url, self._next, self._drop)

    def _next(self, n: int) -> bytes:
        if not self._pending:
            try:
                self._pending = memoryview(next(self._stream))
            except StopIteration:
                return b""
            except (self._store._ob.exceptions.BaseError, OSError) as e:
                raise self._store._error(self.key, e) from None
        out, self._pending = bytes(self._pending[:n]), self._pending[n:]
        return out

    def _drop(self) -> None:
        self._stream, self._pending = None, memoryview(b"")


def _first_line(e: BaseException, limit: int = 300) -> str:
    """obstore's messages run over many lines (the whole retry chain); keep the gist."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
