"""The event-log contract, written once. Every durability mode, with an archive (the
default: compaction seals history) and without one (archive=None: compaction deletes),
subclasses LogContract.

Edge cases first, in the spirit of hashicorp/raft's log store tests: empty log, index
0, the compaction boundary's term, truncate then append, compact everything.
"""

from __future__ import annotations

import pytest
import torch

from eventlog import (
    Archive, ClosedError, CompactedError, CorruptEntryError, EventLog, LogError, SealedError, decode_payload,
    encode_payload,
)


class LogContract:
    durability: str = "sync"
    archive: Archive | None = Archive()

    @property
    def archived(self) -> bool:
        """Whether compaction keeps history readable (an archive) or deletes it (archive=None)."""
        return self.archive is not None

    @pytest.fixture
    def path(self, tmp_path):
        return tmp_path / "log"

    @pytest.fixture
    def log(self, path):
        with EventLog.open(path, durability=self.durability, archive=self.archive) as log:
            yield log

    def reopen(self, log):
        path = log.path
        log.close()
        return EventLog.open(path, durability=self.durability, archive=self.archive)

    # --- the empty log -------------------------------------------------------

    def test_empty_log_bounds(self, log):
        assert (log.first_index, log.last_index, log.durable_index) == (1, 0, 0)
        assert log.term == 1
        assert list(log.entries()) == []
        assert list(log.headers()) == []

    def test_index_zero_is_the_boundary(self, log):
        assert log.term_at(0) == 0
        with pytest.raises(IndexError):
            log.entry(0)
        with pytest.raises(IndexError):
            log.term_at(1)

    def test_entry_past_the_end(self, log):
        log.append("a", 1)
        with pytest.raises(IndexError):
            log.entry(2)

    def test_wait_durable_past_the_end_raises(self, log):
        with pytest.raises(IndexError):
            log.wait_durable(1)
        log.wait_durable(0)  # nothing to wait for

    def test_empty_append_many(self, log):
        assert log.append_many([]) == range(1, 1)
        assert log.last_index == 0

    # --- appending and reading -----------------------------------------------

    def test_append_returns_contiguous_indexes(self, log):
        assert log.append("a", 1) == 1
        assert log.append_many([("b", 2), ("c", 3)]) == range(2, 4)
        assert log.append("d", None) == 4
        log.flush()
        assert [(e.index, e.op, e.payload) for e in log.entries()] == [
            (1, "a", 1), (2, "b", 2), (3, "c", 3), (4, "d", None)]

    # --- appending bytes encoded once -----------------------------------------

    def test_append_encoded_stores_exactly_those_bytes(self, log):
        payload = {"lr": 0.1, "ids": [1, 2, 3], "w": torch.arange(4, dtype=torch.bfloat16)}
        raw = encode_payload(payload)
        assert log.append("step", encoded=raw) == 1
        assert log.append("step", payload) == 2
        log.flush()
        first, second = log.entries()
        assert first.payload.keys() == second.payload.keys() == payload.keys()
        assert torch.equal(first.payload["w"], payload["w"]) and first.payload["ids"] == [1, 2, 3]
        # the stored payload is the given bytes, byte for byte: both entries decode alike
        assert repr(decode_payload(raw)) == repr(first.payload) == repr(second.payload)

    def test_append_encoded_refuses_both_or_non_bytes(self, log):
        with pytest.raises(ValueError, match="either payload or encoded"):
            log.append("a", 1, encoded=encode_payload(1))
        with pytest.raises(TypeError, match="encoded= must be the bytes"):
            log.append("a", encoded=bytearray(encode_payload(1)))
        assert log.last_index == 0

    def test_append_encoded_garbage_is_a_corrupt_entry_on_read(self, log):
        log.append("a", encoded=b"\xc1")  # 0xc1 is never valid msgpack
        log.flush()
        with pytest.raises(CorruptEntryError, match="payload does not decode"):
            log.entry(1)

    def test_encode_payload_names_the_path(self):
        with pytest.raises(TypeError, match=r"payload\['x'\]\[1\]"):
            encode_payload({"x": [1, object()]})

    def test_truncate_then_append_is_one_step(self, log):
        log.append_many([("op", i) for i in range(5)])
        log.flush()
        log.append("buffered", 5)  # still in the group buffer in group mode
        assert log.truncate_after(3, then_append=("audit", {"dropped": [4, 5, 6]})) == 4
        log.flush()
        assert [(e.index, e.op) for e in log.entries()] == [(1, "op"), (2, "op"), (3, "op"), (4, "audit")]
        assert log.append("next", None) == 5
        log.flush()
        assert log.verify().ok
        with pytest.raises(TypeError, match="payload"):
            log.truncate_after(2, then_append=("audit", object()))
        assert log.last_index == 5  # an unencodable record drops nothing
        assert log.truncate_after(5, then_append=("audit", 1)) == 6  # nothing to drop: still appends
        log = self.reopen(log)
        assert [e.op for e in log.entries()] == ["op", "op", "op", "audit", "next", "audit"]
        assert log.verify().ok
        log.close()

    def test_entries_range_is_half_open(self, log):
        log.append_many([("op", i) for i in range(10)])
        assert [e.payload for e in log.entries(3, 6)] == [2, 3, 4]
        assert [e.index for e in log.entries(8)] == [8, 9, 10]
        assert [e.index for e in log.entries(9, 100)] == [9, 10]  # stop is clamped
        assert list(log.entries(5, 5)) == []

    def test_reads_span_many_read_batches(self, log):
        n = 2500  # more than two READ_BATCHes
        log.append_many([("op", i) for i in range(n)])
        assert [e.payload for e in log.entries()] == list(range(n))
        assert [h.index for h in log.headers(1000, 2100)] == list(range(1000, 2100))

    def test_headers_match_entries(self, log):
        log.append("first", {"x": b"123"})
        log.append("second", [1, 2, 3])
        for header, entry in zip(log.headers(), log.entries()):
            assert (header.index, header.term, header.op, header.checksum, header.time_ns) == (
                entry.index, entry.term, entry.op, entry.checksum, entry.time_ns)
            assert header.payload_size > 0

    def test_payload_round_trip(self, log):
        payload = {
            "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1], "float": 0.1, "bool": True, "none": None,
            "str": "ünïcode", "bytes": b"\x00\xff", "nested": {"a": [{"b": [1.5]}]}, 7: "int key",
            "tensor": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        }
        index = log.append("p", payload)
        got = log.entry(index).payload
        tensor = got.pop("tensor")
        expected = dict(payload)
        assert torch.equal(tensor, expected.pop("tensor"))
        assert got == expected

    def test_entry_time_is_wall_clock(self, log):
        import time

        before = time.time_ns()
        index = log.append("t", None)
        assert before <= log.entry(index).time_ns <= time.time_ns()

    def test_unencodable_payload_appends_nothing(self, log):
        log.append("ok", 1)
        with pytest.raises(TypeError, match=r"payload\['batch'\]\[1\]"):
            log.append("bad", {"batch": [1, object()]})
        with pytest.raises(TypeError, match="item 1"):
            log.append_many([("ok", 2), ("bad", {1: {2: set()}})])
        assert log.last_index == 1
        assert [e.payload for e in self.reopen(log).entries()] == [1]

    def test_bad_op_names(self, log):
        with pytest.raises(ValueError):
            log.append("", 1)
        with pytest.raises(TypeError):
            log.append(3, 1)
        assert log.last_index == 0

    # --- durability ------------------------------------------------------------

    def test_flush_makes_everything_durable(self, log):
        log.append_many([("op", i) for i in range(100)])
        assert log.flush() == 100
        assert log.durable_index == 100
        log.wait_durable(100)

    def test_reopen_keeps_entries_and_bumps_term(self, log):
        log.append("a", 1)
        log = self.reopen(log)
        try:
            assert log.term == 2
            assert log.append("b", 2) == 2
            assert [(e.term, e.payload) for e in log.entries()] == [(1, 1), (2, 2)]
            assert log.term_at(1) == 1 and log.term_at(2) == 2
        finally:
            log.close()

    def test_checksum_at_follows_the_chain_and_the_boundary(self, log):
        assert log.checksum_at(0) == 0  # the seed of the first entry ever written
        with pytest.raises(IndexError):
            log.checksum_at(1)
        log.append_many([("op", i) for i in range(5)])
        log.append("buffered", 5)  # still in the group buffer in group mode
        expected = {h.index: h.checksum for h in log.headers()}
        assert [log.checksum_at(i) for i in range(1, 7)] == [expected[i] for i in range(1, 7)]
        assert len(set(expected.values())) == 6
        with pytest.raises(IndexError):
            log.checksum_at(7)
        log.compact_through(3)
        assert log.checksum_at(3) == expected[3]  # the boundary answers
        assert log.checksum_at(4) == expected[4]
        if self.archived:  # sealed entries answer from their segment, index 0 from the archive's boundary
            assert [log.checksum_at(i) for i in (0, 1, 2)] == [0, expected[1], expected[2]]
        else:
            with pytest.raises(CompactedError):
                log.checksum_at(2)
            with pytest.raises(CompactedError):
                log.checksum_at(0)
        log = self.reopen(log)
        try:
            assert [log.checksum_at(i) for i in (3, 4, 6)] == [expected[3], expected[4], expected[6]]
            with EventLog.open(log.path, readonly=True) as reader:
                assert [reader.checksum_at(i) for i in (3, 6)] == [expected[3], expected[6]]
                with pytest.raises(IndexError):
                    reader.checksum_at(7)
        finally:
            log.close()

    def test_header_size_is_the_fixed_header(self, log):
        import eventlog

        index = log.append("abc", b"xy")
        log.flush()
        header = log.entry(index)
        assert eventlog.HEADER_SIZE == 32
        assert log.bytes_appended == eventlog.HEADER_SIZE + len("abc") + len(encode_payload(b"xy"))
        assert header.op == "abc"

    # --- truncation ------------------------------------------------------------

    def test_truncate_then_append(self, log):
        log.append_many([("op", i) for i in range(5)])
        log.truncate_after(3)
        assert log.last_index == 3
        assert log.append("new", "x") == 4
        assert [e.payload for e in log.entries()] == [0, 1, 2, "x"]
        assert log.verify().ok
        log = self.reopen(log)
        try:
            assert [e.payload for e in log.entries()] == [0, 1, 2, "x"]
            assert log.verify().ok
        finally:
            log.close()

    def test_truncate_everything(self, log):
        log.append_many([("op", i) for i in range(3)])
        log.truncate_after(0)
        assert (log.first_index, log.last_index) == (1, 0)
        assert log.append("again", 1) == 1
        assert log.verify().ok

    def test_truncate_at_last_is_a_noop_and_past_it_an_error(self, log):
        log.append("a", 1)
        log.truncate_after(1)
        assert log.last_index == 1
        with pytest.raises(IndexError):
            log.truncate_after(2)

    # --- compaction ------------------------------------------------------------

    def test_compaction_keeps_the_boundary_term(self, log):
        log.append_many([("op", i) for i in range(5)])
        log.compact_through(3)
        assert (log.live_first_index, log.last_index) == (4, 5)
        assert log.term_at(3) == 1  # the boundary answers
        if self.archived:  # nothing was deleted: every read goes on across the archive
            assert log.first_index == 1
            assert log.term_at(2) == 1 and log.term_at(0) == 0
            assert log.entry(3).payload == 2
            assert [e.payload for e in log.entries(2)] == [1, 2, 3, 4]
            assert [e.payload for e in log.entries()] == [0, 1, 2, 3, 4]
        else:
            assert log.first_index == 4
            with pytest.raises(CompactedError):
                log.term_at(2)
            with pytest.raises(CompactedError):
                log.entry(3)
            with pytest.raises(CompactedError):
                list(log.entries(2))
            assert [e.payload for e in log.entries()] == [3, 4]
        assert log.verify().ok

    def test_compact_everything_then_append(self, log):
        log.append_many([("op", i) for i in range(4)])
        log.compact_through(4)
        first = 1 if self.archived else 5
        assert (log.first_index, log.live_first_index, log.last_index) == (first, 5, 4)
        assert [e.payload for e in log.entries()] == ([0, 1, 2, 3] if self.archived else [])
        assert log.append("next", "n") == 5
        assert log.entry(5).payload == "n"  # chained from the boundary checksum
        log = self.reopen(log)
        try:
            assert (log.first_index, log.live_first_index, log.last_index) == (first, 5, 5)
            report = log.verify()
            assert report.ok and report.checked == 6 - first
            assert (report.first_index, report.live_first_index) == (first, 5)
            assert log.term_at(4) == 1
        finally:
            log.close()

    def test_compact_is_idempotent_and_bounded(self, log):
        log.append_many([("op", i) for i in range(4)])
        log.compact_through(2)
        log.compact_through(1)  # already compacted: no-op
        assert log.live_first_index == 3
        assert log.first_index == (1 if self.archived else 3)
        with pytest.raises(IndexError):
            log.compact_through(5)
        with pytest.raises(SealedError if self.archived else CompactedError):
            log.truncate_after(1)  # sealed history is never rewritten; deleted history is gone
        log.truncate_after(2)  # truncating back to the boundary empties LMDB
        assert (log.live_first_index, log.last_index) == (3, 2)
        assert log.append("x", 0) == 3
        assert [(e.op, e.payload) for e in log.entries()] == ([("op", 0), ("op", 1)] if self.archived else []) + [("x", 0)]
        assert log.verify().ok

    def test_compaction_in_steps_reads_as_one_log(self, log):
        n = 2600  # more than two read batches, compacted in three steps of unequal size
        log.append_many([("op", i) for i in range(n)])
        headers = {h.index: h for h in log.headers()}
        for through in (700, 701, 2100):
            log.compact_through(through)
        first = 1 if self.archived else 2101
        assert (log.first_index, log.live_first_index, log.last_index) == (first, 2101, n)
        assert [e.payload for e in log.entries()] == list(range(first - 1, n))
        if self.archived:  # a range across two segments
            assert [e.payload for e in log.entries(700, 703)] == [699, 700, 701]
        else:
            with pytest.raises(CompactedError):
                list(log.entries(700, 703))
        assert [h.checksum for h in log.headers(first)] == [headers[i].checksum for i in range(first, n + 1)]
        assert [h.index for h in log.headers(first, verify=False)] == list(range(first, n + 1))
        for index in sorted({first, 700, 701, 702, 2100, 2101, n} & set(range(first, n + 1))):
            assert log.entry(index).checksum == headers[index].checksum
            assert log.term_at(index) == 1 and log.checksum_at(index) == headers[index].checksum
        report = log.verify()
        assert report.ok and report.checked == n - first + 1
        assert report.segments == (3 if self.archived else 0)
        with EventLog.open(log.path, readonly=True) as reader:  # another handle reads the same log
            assert (reader.first_index, reader.live_first_index) == (first, 2101)
            assert [e.payload for e in reader.entries()] == list(range(first - 1, n))

    def test_terms_of_compacted_entries(self, log):
        log.append("a", 1)
        log = self.reopen(log)
        log.append_many([("b", 2), ("c", 3)])
        log = self.reopen(log)
        try:
            log.append("d", 4)
            log.compact_through(3)
            report = log.verify()
            assert report.ok
            # replay stats shows each writer start from these: archived terms stay answerable
            assert report.terms == (((1, 1), (2, 2), (3, 4)) if self.archived else ((3, 4),))
            assert [log.term_at(i) for i in range(3, 5)] == [2, 3]
            if self.archived:
                assert [log.term_at(i) for i in range(0, 5)] == [0, 1, 2, 2, 3]
                assert [h.term for h in log.headers()] == [1, 2, 2, 3]
        finally:
            log.close()

    # --- verify and lifecycle ---------------------------------------------------

    def test_verify_reports_terms(self, log):
        log.append("a", 1)
        log = self.reopen(log)
        try:
            log.append("b", 2)
            log.append("c", 3)
            report = log.verify()
            assert report.ok and report.checked == 3
            assert report.terms == ((1, 1), (2, 2))
        finally:
            log.close()

    def test_closed_log_refuses_calls(self, log):
        log.close()
        log.close()  # idempotent
        with pytest.raises(LogError, match="closed"):
            log.append("a", 1)
        with pytest.raises(LogError, match="closed"):
            _ = log.last_index
        for call in (lambda: log.append("a", 1), lambda: log.append_many([("a", 1)]), log.flush,
                     lambda: log.entry(1), lambda: list(log.entries()), lambda: log.term_at(0),
                     lambda: log.checksum_at(0), log.verify, lambda: log.truncate_after(0),
                     lambda: log.compact_through(0), lambda: log.wait_durable(0)):
            with pytest.raises(ClosedError, match="closed"):
                call()
