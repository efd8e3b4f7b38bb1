"""Reads of a log with an entry missing from LMDB (anywhere inside a read batch, near the
end of the log, with the default batch and with batches of 7): `entries()` and verified
`headers()` raise CorruptEntryError naming exactly that index, having yielded only entries
before it (in order, none under another's index), and verify() reports the log damaged.
(A gap exactly where a read batch starts: tests/eventlog/test_batch_boundary_gap.py.)"""

from __future__ import annotations

import pytest

from eventlog import CorruptEntryError, EventLog
from eventlog import reader as reader_module
from tests.eventlog.raw import delete_entry

N = 40


def _log(path, n=N):
    with EventLog.open(path, durability="os") as log:
        log.append_many([("put", {"i": i}) for i in range(1, n + 1)])
    return path


@pytest.fixture(params=[None, 7], ids=["one-run", "runs-of-7"])
def read_batch(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(reader_module, "READ_BATCH", request.param)
    return request.param


@pytest.mark.parametrize("missing", [2, 6, 9, 13, 20, 39])
def test_a_missing_entry_is_named_by_every_reader(tmp_path, read_batch, missing):
    path = _drop_from(tmp_path, missing)
    with EventLog.open(path, readonly=True) as log:
        seen = []
        with pytest.raises(CorruptEntryError) as raised:
            for entry in log.entries():
                seen.append(entry.index)
        assert raised.value.index == missing
        assert seen == list(range(1, len(seen) + 1)) and len(seen) < missing
        with pytest.raises(CorruptEntryError) as raised:
            list(log.headers(verify=True))
        assert raised.value.index == missing
        assert not log.verify().ok


def _drop_from(tmp_path, missing):
    path = _log(tmp_path / "log")
    delete_entry(path, missing)
    return path


def test_reads_that_end_at_the_last_entry_are_whole(tmp_path, read_batch):
    path = _log(tmp_path / "log")
    with EventLog.open(path, readonly=True) as log:
        assert [e.payload["i"] for e in log.entries()] == list(range(1, N + 1))
        assert [e.index for e in log.entries(N - 3, N + 5)] == [N - 3, N - 2, N - 1, N]
        assert log.entry(N).payload == {"i": N}
