"""Named errors of the replica (replay/replica). Each is raised exactly when its docstring says.

Every message names the store's URL and, where there is one, the object key, so an operator
can find the object with the store's own tools.
"""

from __future__ import annotations

from ..errors import DamageError, ReplayError


def _where(url: str | None, key: str | None) -> str:
    if url and key is not None:
        return f"{url.rstrip('/')}/{key}"
    return url or key or "replica"


class ReplicaError(ReplayError):
    """Base class of every error the replica raises on purpose."""


class ObjectNotFoundError(ReplicaError):
    """`get` (or a conditional replace) named a key that holds no object."""

    def __init__(self, key: str, url: str | None = None):
        self.key = key
        self.url = url
        super().__init__(f"replica object {_where(url, key)} does not exist")


class PreconditionFailedError(ReplicaError):
    """A conditional write lost: the object exists (create-only) or its etag is not the one given."""

    def __init__(self, key: str, url: str | None = None, detail: str = ""):
        self.key = key
        self.url = url
        super().__init__(f"conditional write of replica object {_where(url, key)} refused"
                         + (f": {detail}" if detail else ""))


class ObjectTooLargeError(ReplicaError):
    """`get` found an object larger than the caller's limit (nothing beyond limit + 1 bytes was read)."""

    def __init__(self, key: str, limit: int, url: str | None = None):
        self.key = key
        self.limit = limit
        self.url = url
        super().__init__(f"replica object {_where(url, key)} is larger than the limit of {limit} bytes")


class ReplicaUnavailableError(ReplicaError):
    """The store cannot be reached: connection refused, timeout, or 5xx after the client's own retries."""

    def __init__(self, url: str, reason: str, key: str | None = None):
        self.url = url
        self.key = key
        self.reason = reason
        super().__init__(f"replica {_where(url, key)} is unavailable: {reason}")


class ReplicaFencedError(ReplicaError):
    """Another writer holds the replica (its head.json names another owner, or was written since
    this writer's claim): this writer may not ship, and a Journal refuses to open or to apply.

    `owner`, `index` and `term` are those of the head.json that holds it, when known (None
    otherwise); the message names them and this copy's own owner and last index."""

    def __init__(self, url: str, detail: str, *, owner: str | None = None, index: int | None = None,
                 term: int | None = None):
        self.url = url
        self.detail = detail
        self.owner = owner
        self.index = index
        self.term = term
        super().__init__(f"replica {url} is held by another writer: {detail}")


class ReplicaDamageError(ReplicaError, DamageError):
    """An object is not what a writer wrote (wrong bytes, not a regular file, a symlink): names the key."""

    def __init__(self, key: str, reason: str, url: str | None = None):
        self.key = key
        self.url = url
        self.reason = reason
        super().__init__(f"replica object {_where(url, key)} is damaged: {reason}")


class RestoreTargetError(ReplicaError, FileExistsError):
    """The directory given to `restore` cannot become a new journal (the current directory, a
    file, a non-empty directory, a leftover under the staging name that is not a restore's):
    raised before anything is read from the replica; the message names the path and the remedy."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]
