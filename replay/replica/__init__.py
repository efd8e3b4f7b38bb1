"""Replication of a journal to object storage (a directory on a shared filesystem, or S3).

``open_store(url, options)`` opens the ``ObjectStore`` a replica URL names; the errors
every replica operation raises are in ``replay.replica.errors``.
"""

from .errors import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReplicaDamageError,
    ReplicaError,
    ReplicaFencedError,
    ReplicaUnavailableError,
    RestoreTargetError,
)
from .objects import FileObjectStore, ObjectReader, ObjectStore, S3ObjectStore, open_store

__all__ = [
    "FileObjectStore", "ObjectNotFoundError", "ObjectReader", "ObjectStore", "ObjectTooLargeError",
    "PreconditionFailedError", "ReplicaDamageError", "ReplicaError", "ReplicaFencedError",
    "ReplicaUnavailableError", "RestoreTargetError", "S3ObjectStore", "open_store",
]
