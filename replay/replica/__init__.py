"""Replication of a journal to object storage (a directory on a shared filesystem, or S3).

``open_store(url, options)`` opens the ``ObjectStore`` a replica URL names; the errors
every replica operation raises are in ``replay.replica.errors``.

Modules, one job each (the formats are FORMAT.md's):

    objects     open_store, and every object-store name: store (the interface, key rules),
                capped (the one capped read), filestore (a directory), s3store (S3; s3options:
                its settings)
    chain       object keys, and the walk from head.json back along segment keys
    head        head.json and DIR/replica.json (who writes the replica)
    claim       claim and fencing: the claim, and every conditional head.json write (HeadOwner)
    rounds      shipping rounds: manifests and chunks, then segments (merging: small ones merged;
                sources: archive files as they are, checked once; uploads: puts in flight)
    retention   what garbage collection keeps and deletes (plan, Collector)
    collecting  when it runs (CollectionSchedule)
    status      waiting and status (Progress, ReplicaStatus, ReplicaLagError)
    shipper     Shipper: the thread that coordinates the four above
    snapfiles   snapshot files as shipped and restored (on snapshots' public transfer API)
    restore     a replica -> a new journal directory

Only public names of ``eventlog`` and ``snapshots`` are imported here.
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
