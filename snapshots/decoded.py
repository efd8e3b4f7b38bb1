"""Manifests this process has decoded, kept by name and exact bytes.

Decoding a manifest checks every field of every tensor and chunk (manifest.py), which
for a state of a few hundred tensors costs milliseconds and allocates thousands of
objects (whose garbage collection costs as much again). A process that reloads the same
snapshot (a trainer rolling back, a hot `load_into`) would pay that on every load. The
file is still read and its bytes compared every time: the cache is keyed by the exact
bytes, so a manifest replaced under the same name (a re-save at the same index and
term), damaged, or truncated is decoded and checked afresh, as on a first read.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import replace
from threading import Lock

from .manifest import Manifest

# How many manifests are kept (the most recently read: a reload reads the newest few),
# and how many of their bytes at most: a decoded manifest takes several times its file's
# size in Python objects, and a state of a million tensors has a manifest of tens of MiB.
KEEP = 4
KEEP_BYTES = 8 << 20


class DecodedManifests:
    """A bounded cache of decoded manifests, by name and bytes. Thread-safe."""

    def __init__(self, keep: int = KEEP, keep_bytes: int = KEEP_BYTES):
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._lock = Lock()
        self._by_name: OrderedDict[str, tuple[bytes, Manifest]] = OrderedDict()

    def get(self, name: str, data: bytes) -> Manifest | None:
        """The manifest decoded earlier from exactly `data` read from `name`, or None.
        Its `meta` is a copy when it is a container (the caller may hand it to a user, who
        may change it), so no caller sees another's changes."""
        with self._lock:
            hit = self._by_name.get(name)
            if hit is None or hit[0] != data:
                return None
            self._by_name.move_to_end(name)
        manifest = hit[1]
        if isinstance(manifest.meta, (dict, list)):
            manifest = replace(manifest, meta=copy.deepcopy(manifest.meta))
        return manifest

    def put(self, name: str, data: bytes, manifest: Manifest) -> None:
        """Remember `manifest`, decoded from `data` read from `name` (its meta is copied,
        so a caller that changes the meta of the one it got does not change this one).
        The oldest are forgotten beyond KEEP manifests or KEEP_BYTES of their files; one
        larger than KEEP_BYTES alone is not kept."""
        if len(data) > self._keep_bytes:
            return
        if isinstance(manifest.meta, (dict, list)):
            manifest = replace(manifest, meta=copy.deepcopy(manifest.meta))
        with self._lock:
            self._by_name[name] = (data, manifest)
            self._by_name.move_to_end(name)
            while (len(self._by_name) > self._keep
                   or sum(len(d) for d, _ in self._by_name.values()) > self._keep_bytes):
                self._by_name.popitem(last=False)
