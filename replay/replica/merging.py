"""Merging a replica's small segment objects as they age (FORMAT.md, "Merging segments").

A journal ships its tail every `ship_interval` as one small object; over a day at the
default second that is tens of thousands of objects, all listed by every restore and
every garbage collection. After a round's segments are uploaded and before head.json
moves, the newest segments of the chain are re-shipped as one object covering them all
(eventlog's merge rule, `eventlog.newest_to_merge`, over their entry counts). The merged
object ends where the last of them ends, and the walk from the head prefers the segment
reaching further back (chain.walk_back), so the head's path goes through the merged
object and the small ones fall off it; garbage collection deletes them like any object
off the path. Nothing is overwritten, so a crash anywhere leaves a replica that restores.
"""

from __future__ import annotations

from typing import Callable

from eventlog import SEGMENT_HEADER_SIZE, SEGMENT_TARGET_BYTES, CompactedError, newest_to_merge, segment_bounds

from .chain import SegmentKey
from .errors import ReplicaError


def merge_tail(log, chain: list[SegmentKey], put: Callable[[str, bytes], object],
               sizes: dict[str, int] | None = None) -> int:
    """Merge the chain's newest segments while the rule says so; return how many objects were
    uploaded. `chain` (oldest first, consecutive) is updated in place.

    A run is left as it is when the local log no longer holds its first entry (retention
    dropped it), or its body would be larger than what compaction seals in one segment
    (`log.segment_ranges` cuts it in two): those stop merging, as local files do.
    `sizes` (segment key -> object bytes, for the objects the caller stored; merged ones
    are added) decides the second case without reading the log when the objects alone
    are larger than a segment's body may be (a catch-up of whole 16 MiB archive files,
    whose scan would decompress every one of them only to find they do not fit).
    """
    uploaded = 0
    while True:
        count = newest_to_merge([seg.last - seg.first + 1 for seg in chain])
        if not count:
            return uploaded
        run = chain[-count:]
        first, last = run[0].first, run[-1].last
        if sizes is not None and _too_large(run, sizes):
            return uploaded
        try:
            if first < log.first_index or len(log.segment_ranges(first, last)) != 1:
                return uploaded
        except (CompactedError, IndexError):
            return uploaded
        data = log.sealed_range(first, last)
        got = segment_bounds(data)
        if got != (first, last, run[0].prev, run[-1].last_checksum):
            # The local log no longer holds the chain's history (a truncation raced this
            # round): the next round's chain check re-ships from where they agree.
            raise ReplicaError(f"sealed_range({first}, {last}) does not match the shipped segments "
                               f"{run[0].key} .. {run[-1].key}")
        merged = SegmentKey(first, last, run[0].prev, run[-1].last_checksum)
        put(merged.key, data)
        if sizes is not None:
            sizes[merged.key] = len(data)
        chain[-count:] = [merged]
        uploaded += 1


def _too_large(run: list[SegmentKey], sizes: dict[str, int]) -> bool:
    """Whether the stored objects of `run` prove its merged body larger than SEGMENT_TARGET_BYTES.

    An object holds its header, then its compressed body, which zstd makes at most
    stored_bound(raw) = raw + raw/128 + 4 KiB: so raw >= (object - header - 4 KiB) * 128/129.
    Unknown sizes (objects shipped before this process) count as 0: never a wrong refusal."""
    floor = sum(max(0, sizes.get(seg.key, 0) - SEGMENT_HEADER_SIZE - 4096) * 128 // 129 for seg in run)
    return floor > SEGMENT_TARGET_BYTES
