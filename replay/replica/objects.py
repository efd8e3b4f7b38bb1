"""Object stores a journal replicates to: one interface, a directory backend and an S3 backend.

``open_store(url)`` opens the store a replica URL names. The parts, one job each:

    store       the ObjectStore / ObjectReader interface and the key rules every backend shares
    capped      reading one object with a byte cap (both backends' readers and `get`)
    filestore   FileObjectStore: a directory, e.g. on a shared filesystem (``file:///abs/dir``)
    s3store     S3ObjectStore: an S3-compatible bucket/prefix through obstore (``s3://bucket/prefix``)

Every public name stays importable from here (``replay.replica.objects``) and from
``replay.replica``. The S3 backend imports its client library only when an ``s3://`` store
is opened, so the optional extra (``torch-eventlog[s3]``) is needed only by those who use it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from .capped import CappedReader, read_all
from .filestore import FileObjectStore
from .s3store import S3ObjectStore
from .store import MAX_KEY, ObjectReader, ObjectStore, check_key, check_prefix, content_etag

__all__ = ["CappedReader", "FileObjectStore", "MAX_KEY", "ObjectReader", "ObjectStore", "S3ObjectStore",
           "check_key", "check_prefix", "content_etag", "open_store", "read_all"]


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
