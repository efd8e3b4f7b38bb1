"""Row 16, merges: a writer killed at every unlink / rename / fsync of a compaction that
merges eight small archive segments into one (eventlog/FORMAT.md, "Merging").

The base log holds seven two-entry segments (1..14); the swept run's first compaction
seals 15..16 and merges the eight, its second seals 17..18. After every kill a readonly
reader checks every acknowledged entry (tests/crash/test_archive.check_log), and the next
writer's compaction removes what the crash left. The window that matters must be hit: a
kill between the merged file's rename and the last unlink, which leaves a segment inside
another one.
"""

from __future__ import annotations

import shutil

import pytest

from eventlog.archive import list_segments

from .test_archive import check_log, run_writer

pytestmark = [pytest.mark.crash, pytest.mark.fault_archive]

TARGET = 10**6  # large enough that eight compactions' segments merge into one


@pytest.fixture(scope="module")
def seven_segments(tmp_path_factory):
    path = tmp_path_factory.mktemp("merge") / "base"
    acks, finished, status, stderr = run_writer(path, count=16, every=2, target=TARGET)
    assert finished, stderr
    names = list_segments(path / "archive")
    assert [(n.first, n.last) for n in names] == [(i, i + 1) for i in range(1, 15, 2)]
    return path, {i: t for t, i in acks}


def _nested(path) -> bool:
    names = list_segments(path / "archive")
    return any(a.first <= b.first and b.last <= a.last for a in names for b in names if a != b)


@pytest.mark.timeout(280)
@pytest.mark.parametrize("syscall", ["unlink", "rename", "fsync"])
def test_writer_killed_at_every_step_of_a_merge_loses_nothing(strace, tmp_path, seven_segments, syscall):
    base, base_acks = seven_segments
    n, runs, killed, nested, checked = 1, 0, 0, 0, 0
    while True:
        assert n < 80, f"{syscall}: the run never completed"
        path = tmp_path / f"{syscall}-{n}"
        shutil.copytree(base, path)
        got, finished, status, stderr = run_writer(path, strace, f"{syscall}:signal=KILL:when={n}",
                                                   count=4, every=2, target=TARGET)
        runs += 1
        acks = {**base_acks, **{i: t for t, i in got}}
        check_log(path, acks)
        checked += len(acks)
        if finished:
            names = list_segments(path / "archive")
            assert [(x.first, x.last) for x in names] == [(1, 16), (17, 18)], names
            break
        assert status != 0 and "Traceback" not in stderr, (status, stderr)
        nested += _nested(path)
        got, finished, status, stderr = run_writer(path, count=4, every=2, target=TARGET)
        assert finished, stderr
        check_log(path, {**acks, **{i: t for t, i in got}})
        assert not _nested(path), "the next writer did not remove a merge's leftovers"
        killed += 1
        n += 1
    print(f"row 16 kill at {syscall} during merges: {runs} runs, {killed} killed, {checked} acknowledged entries "
          f"checked present, {nested} crash states with a segment inside a merged one")
    assert killed >= 2, f"{syscall}: fewer than 2 calls were killed"
    if syscall == "unlink":
        assert nested >= 1, "no kill landed between a merge's rename and its unlinks: the window was missed"
