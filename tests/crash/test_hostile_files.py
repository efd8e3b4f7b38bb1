"""Row 14: FIFOs, devices, symlinks, huge and amplifying files in the snapshot store
(snapshots/FORMAT.md: what bounds a read, what a load may allocate).

Every hostile file is a damaged snapshot: readers never follow a symlink, wait on a
FIFO or read a device or a sparse giant; latest()/load_latest() skip it and fall back
to the older snapshot, verify() reports it, and prune never deletes through it. Each
load runs in a forked child with a memory cap and a deadline, so a hang or an
unbounded read fails the test instead of hanging it.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import stat

import msgpack
import pytest

from tests.warm import run_replay
import torch
import xxhash

import snapshots
from snapshots.manifest import MAX_MANIFEST_BYTES

from tests.chunkcopies import region

from .checker import journal_writer, recovered_in_fresh_process, run_forked, send

pytestmark = [pytest.mark.crash, pytest.mark.fault_hostile_files]

GiB = 1 << 30


def _cap_memory(extra: int) -> None:
    """RLIMIT_AS = what the (forked, torch-loaded) child maps now + `extra` bytes. Also
    one torch thread: the parent's OpenMP pool does not survive the fork."""
    torch.set_num_threads(1)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.RLIM_INFINITY))


def _good_state():
    return {"w": torch.arange(2048, dtype=torch.float32), "step": 1}


def _bad_state():
    return {"w": torch.arange(2048, dtype=torch.float32) * 3, "step": 2}


def _scene(tmp_path, target: str) -> dict:
    """A store with a good snapshot (10-1) and a newer one (20-1) to be made hostile; the
    path of the `target` file: 20-1's manifest, a loose chunk only 20-1 uses (a store
    written with packs=False, as before packs), or the pack holding such a chunk (the
    default: 20-1's pack holds only chunks of 20-1)."""
    root = str(tmp_path / "snap")
    with snapshots.SnapshotStore(root, chunk_size=4096, workers=2, packs=target == "pack") as store:
        good = store.save(_good_state(), index=10, term=1)
        bad = store.save(_bad_state(), index=20, term=1)
        good_ids = {c.id for c in store._reader.read_manifest(good.manifest_id).chunks}
        only = [c.id for c in store._reader.read_manifest(bad.manifest_id).chunks if c.id not in good_ids][0]
    return {
        "root": root,
        "manifest": os.path.join(root, "manifests", bad.manifest_id),
        "chunk": region(root, only).path,
        "pack": region(root, only).path,
        "outside": str(tmp_path / "outside"),
    }


@pytest.fixture
def scene(tmp_path):
    """The scene of a store written with the default (packs)."""
    return _scene(tmp_path, "pack")


def _fifo(path, outside):
    os.unlink(path)
    os.mkfifo(path)


def _dev_zero(path, outside):
    os.unlink(path)
    os.symlink("/dev/zero", path)


def _symlink_out(path, outside):
    """A symlink to an outside copy of the very same (valid) bytes: refused all the same."""
    os.makedirs(outside, exist_ok=True)
    target = os.path.join(outside, os.path.basename(path))
    shutil.move(path, target)
    os.symlink(target, path)


def _directory(path, outside):
    os.unlink(path)
    os.mkdir(path)
    with open(os.path.join(path, "x"), "wb") as f:
        f.write(b"x")


def _sparse(path, outside):
    os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(64 * GiB)


def _device(path, outside):
    os.unlink(path)
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # the /dev/zero device
    except PermissionError:
        pytest.skip("mknod is not permitted here (only the device-node kind is skipped)")


KINDS = {
    "fifo": (_fifo, "FIFO"),
    "dev_zero_symlink": (_dev_zero, "symbolic link"),
    "symlink_outside": (_symlink_out, "symbolic link"),
    "directory": (_directory, "directory"),
    "sparse_64GiB": (_sparse, "bytes, more than"),
    "device_node": (_device, "character device"),
}
# A pack has no size bound of its own (one save of a huge state is one pack): a sparse
# giant is refused by its first 8 bytes, the magic, and only its index is ever read whole.
PACK_WORDS = {"sparse_64GiB": "bad pack magic"}


def _load_everything(root, bad_id, out_fd):
    _cap_memory(1 * GiB)
    with snapshots.SnapshotStore(root, workers=2) as store:
        info, state, skipped = store.load_latest()
        latest, _ = store.latest_verified()
        report = store.verify(bad_id)
        send(out_fd, ("result", info.index if info else None, state["step"] if state else None,
                      float(state["w"].sum()) if state else None, [str(r) for r in skipped],
                      latest.index if latest else None, report.ok, str(report),
                      [i.index for i in store.list()]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["manifest", "chunk", "pack"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_file_is_a_skipped_damaged_snapshot(tmp_path, kind, target):
    scene = _scene(tmp_path, target)
    make, words = KINDS[kind]
    words = PACK_WORDS.get(kind, words) if target == "pack" else words
    assert os.path.basename(scene[target]).endswith(".pack") == (target == "pack")
    make(scene[target], scene["outside"])
    outside_before = _tree_bytes(scene["outside"])
    run = run_forked(_load_everything, scene["root"], "20-1", timeout=60)
    assert os.WIFEXITED(run.status) and run.status == 0, f"hung or died: status {run.status}: {run.stderr_tail()}"
    (_, index, step, total, skipped, latest, ok, report, listed), = [m for m in run.messages if m[0] == "result"]
    assert (index, step, total, latest) == (10, 1, float(_good_state()["w"].sum()), 10)
    assert len(skipped) == 1 and "20-1" in skipped[0] and words in skipped[0], skipped
    assert not ok and words in report, report
    assert listed == ([10] if target == "manifest" else [10, 20])  # list() reads manifests only
    assert _tree_bytes(scene["outside"]) == outside_before  # nothing outside was touched


def _tree_bytes(root):
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                out[os.path.join(directory, name)] = xxhash.xxh3_64_hexdigest(f.read())
    return out


def test_a_writer_refuses_a_manifest_readers_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr("snapshots.commit.MAX_MANIFEST_BYTES", 2048)
    with snapshots.SnapshotStore(tmp_path / "s", chunk_size=64, workers=2) as store:
        with pytest.raises(ValueError, match="larger chunk_size"):
            store.save({"w": torch.randn(4096)}, index=1, term=1)
        assert store.list() == []
    assert MAX_MANIFEST_BYTES == 64 << 20  # the bound FORMAT.md states


@pytest.mark.timeout(200)
def test_journal_recovery_and_replay_verify_skip_a_fifo_manifest(tmp_path):
    """The symptom as reported: a FIFO manifest hung Journal.open and `replay verify`."""
    root = str(tmp_path / "j")
    run = run_forked(journal_writer, root, steps=20, timeout=120)
    assert run.done, run.stderr_tail()
    manifests = os.path.join(root, "snapshots", "manifests")
    names = sorted((n for n in os.listdir(manifests) if not n.startswith(".")), key=lambda n: int(n.split("-")[0]))
    assert len(names) >= 2, names
    newest = os.path.join(manifests, names[-1])
    os.unlink(newest)
    os.mkfifo(newest)
    summary = recovered_in_fresh_process(root)
    assert summary["steps"] == 20
    cli = run_replay(["verify", root], cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert cli.returncode == 1, (cli.returncode, cli.stdout[-2000:], cli.stderr[-2000:])
    assert "FIFO" in cli.stdout + cli.stderr and "Traceback" not in cli.stderr


# ------------------------------------------------------------------ item 17: prune


def _prune_in_child(root, out_fd):
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive the fork
    with snapshots.SnapshotStore(root, keep_last=1, workers=2) as store:
        report = store.prune()
        info, state, _ = store.load_latest()
        send(out_fd, ("pruned", list(report.deleted), report.chunks_deleted, list(report.damage),
                      info.index, float(state["w"].sum())))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("link", ["fanout_dir", "chunk_entry", "chunks_dir", "manifests_dir", "packs_dir"])
def test_prune_never_deletes_through_a_symlink(tmp_path, link):
    """chunks/ab (or a chunk, or chunks/, or manifests/, or packs/) is a symlink to an
    outside directory holding files named like chunks, temp files and manifests: prune
    deletes none of them, reports the link as damage, and the store still loads. The
    loose-layout cases write loose chunks (packs=False); packs_dir writes packs."""
    root = str(tmp_path / "snap")
    with snapshots.SnapshotStore(root, chunk_size=4096, workers=2, packs=link in ("manifests_dir", "packs_dir")) as store:
        for i in range(1, 4):  # three snapshots of different tensors: the two old ones are prunable
            store.save({"w": torch.full((2048,), float(i)), "step": i}, index=i, term=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    bait = ["ab" + "0" * 30, "ab" + "f" * 30, ".tmp.ab" + "1" * 30 + ".1.x", "1-1", ".tmp.2-1.1.x"]
    for name in bait:
        (outside / name).write_bytes(b"not yours")
    chunks = os.path.join(root, "chunks")
    os.makedirs(os.path.join(chunks, "ab"), exist_ok=True)  # fan-out directories are made when first used
    if link == "fanout_dir":
        shutil.rmtree(os.path.join(chunks, "ab"))
        os.symlink(outside, os.path.join(chunks, "ab"))
        expect = "chunks/ab is a symbolic link"
    elif link == "chunk_entry":
        os.symlink(outside / bait[0], os.path.join(chunks, "ab", bait[0]))
        expect = f"chunks/ab/{bait[0]} is not a regular file"
    elif link == "chunks_dir":
        os.rename(chunks, str(outside / "real_chunks"))  # the chunks stay readable through the link
        os.symlink(outside / "real_chunks", chunks)
        expect = "chunks/ is not a directory of this store"
    elif link == "packs_dir":
        packs = os.path.join(root, "packs")
        for name in bait[:3]:  # named like packs and a temp pack too
            (outside / (name + ".pack")).write_bytes(b"not yours")
        os.rename(packs, str(outside / "real_packs"))  # the packs stay readable through the link
        os.symlink(outside / "real_packs", packs)
        expect = "packs/ is a symbolic link"
    else:
        manifests = os.path.join(root, "manifests")
        os.rename(manifests, str(outside / "real_manifests"))
        os.symlink(outside / "real_manifests", manifests)
        expect = "manifests/ is a symbolic link"
    before = _tree_bytes(str(outside))
    run = run_forked(_prune_in_child, root, timeout=60)
    assert run.status == 0, run.stderr_tail()
    (_, deleted, chunks_deleted, damage, index, total), = [m for m in run.messages if m[0] == "pruned"]
    assert any(expect in d for d in damage), damage
    assert (index, total) == (3, 3.0 * 2048)
    after = _tree_bytes(str(outside))
    if link in ("fanout_dir", "chunk_entry"):
        assert after == before  # every bait file, byte for byte
        assert deleted == ["1-1", "2-1"] and chunks_deleted >= 2  # the rest of the store was pruned
    else:
        # The store's own files live behind the link: nothing of them nor of the bait is deleted.
        assert {k: v for k, v in after.items() if k in before} == before and len(after) == len(before)
        assert chunks_deleted == 0


# ------------------------------------------------------- item 21: hostile manifest values


def _read_doc(path):
    with open(path, "rb") as f:
        return msgpack.unpackb(f.read()[32:], raw=False, strict_map_key=False)


def _write_doc(path, doc):
    raw = msgpack.packb(doc, use_bin_type=True)
    with open(path, "wb") as f:
        f.write(b"SNPMANIF" + (1).to_bytes(4, "little") + bytes(4) + xxhash.xxh3_128_digest(raw) + raw)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(doc):
        target = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


HOSTILE_VALUES = {
    "created_inf": (_set("created", math.inf), "field 'created'"),
    "created_nan": (_set("created", math.nan), "field 'created'"),
    "created_negative": (_set("created", -1.0), "field 'created'"),
    "created_string": (_set("created", "yesterday"), "field 'created'"),
    "term_2_64": (_set("term", 2**64 - 1), "field 'term'"),
    "index_negative": (_set("index", -1), "field 'index'"),
    "index_float": (_set("index", 20.0), "field 'index'"),
    "format_true": (_set("format", True), "field 'format'"),
    "meta_ext_type": (_set("meta", msgpack.ExtType(5, b"x")), "field 'meta'"),
    "meta_timestamp": (_set("meta", {"t": msgpack.Timestamp(1, 0)}), "field 'meta'"),
    "bytes_logical_lies": (_set("bytes", "logical", 1), "field 'bytes.logical'"),
    "bytes_written_negative": (_set("bytes", "written", -5), "field 'bytes.written'"),
    "bytes_stored_float": (_set("bytes", "stored", 1.5), "field 'bytes.stored'"),
    "bytes_not_a_map": (_set("bytes", [1, 2, 3]), "field 'bytes'"),
    "unknown_field": (_set("evil", 1), "unknown field"),
    "missing_field": (lambda doc: doc.pop("tree"), "missing field"),
    "chunks_not_array": (_set("chunks", {"a": 1}), "field 'chunks'"),
    "stored_len_huge": (_set("chunks", 0, 2, 2**40), "chunks[0].stored_len"),
    "stored_len_tiny": (_set("chunks", 0, 2, 3), "chunks[0].stored_len"),
    "dtype_unhashable": (_set("tensors", 0, 0, ["float32"]), "tensors[0].dtype"),
    "shape_float": (_set("tensors", 0, 1, [2048.0]), "tensors[0].shape"),
    "shape_overflows": (_set("tensors", 0, 1, [2**40, 2**40, 0]), "tensors[0].shape"),
    "segment_past_chunk": (lambda doc: doc["tensors"][0][2][0].__setitem__(1, doc["chunks"][0][1]), "reads past"),
    "segments_short": (_set("tensors", 0, 1, [4096]), "segments hold"),
}


@pytest.mark.parametrize("case", list(HOSTILE_VALUES))
def test_hostile_manifest_value_is_damage_naming_the_field(scene, case):
    change, words = HOSTILE_VALUES[case]
    doc = _read_doc(scene["manifest"])
    change(doc)
    path = scene["manifest"]
    if case == "term_2_64":  # the name must agree, or the name check would fire first
        os.unlink(path)
        path = os.path.join(os.path.dirname(path), f"20-{2**64 - 1}")
    _write_doc(path, doc)
    name = os.path.basename(path)
    with snapshots.SnapshotStore(scene["root"], workers=2) as store:
        report = store.verify(name)
        assert not report.ok and words in str(report), str(report)
        info, state, skipped = store.load_latest()
        assert info.index == 10 and state["step"] == 1
        assert len(skipped) == 1 and words in str(skipped[0]) and name in str(skipped[0]), skipped
        assert [i.index for i in store.list()] == [10]


# ------------------------------------------------------------ item 15: amplification

MiB = 1 << 20


def _amplify_child(root, out_fd):
    _cap_memory(1 * GiB)  # the amplifying snapshot declares 64 GiB
    with snapshots.SnapshotStore(root, workers=2) as store:
        info, state, skipped = store.load_latest()
        try:
            store.load_latest(like={"z": torch.zeros(16 * MiB, dtype=torch.uint8)})
            mismatch = None
        except snapshots.StateMismatchError as e:
            mismatch = [e.key, str(e)]
        report = store.verify("20-1")
        send(out_fd, ("result", info.index, int(state["z"].sum()), state["z"].numel(), [str(r) for r in skipped],
                      mismatch, report.ok, report.chunks_checked, report.bytes_checked))


@pytest.mark.timeout(120)
def test_amplifying_manifest_is_refused_before_or_at_allocation(tmp_path):
    """One honest 16 MiB zero chunk referenced 4096 times by a manifest declaring a
    64 GiB tensor (a few KB on disk). Under a 1 GiB address-space cap: load_latest skips
    it as damage (allocation failure, no traceback) and loads the older snapshot; with
    `like` the layout is refused before allocating; verify reads the one chunk once."""
    root = str(tmp_path / "snap")
    with snapshots.SnapshotStore(root, chunk_size=16 * MiB, workers=2) as store:
        store.save({"z": torch.zeros(16 * MiB, dtype=torch.uint8)}, index=15, term=1)
    path15 = os.path.join(root, "manifests", "15-1")
    doc = _read_doc(path15)
    declared = 4096 * 16 * MiB
    doc.update(index=20, tensors=[["uint8", [declared], [[0, 0, 16 * MiB]] * 4096]])
    doc["bytes"]["logical"] = declared
    _write_doc(os.path.join(root, "manifests", "20-1"), doc)
    assert os.path.getsize(os.path.join(root, "manifests", "20-1")) < 64 * 1024
    run = run_forked(_amplify_child, root, timeout=90)
    assert run.status == 0, run.stderr_tail()
    (_, index, total, numel, skipped, mismatch, ok, chunks_checked, bytes_checked), = run.messages
    assert (index, total, numel) == (15, 0, 16 * MiB)
    assert len(skipped) == 1 and "20-1" in skipped[0] and "cannot allocate" in skipped[0], skipped
    assert mismatch is not None and mismatch[0] == "['z']" and str(declared) in mismatch[1], mismatch
    # Sound by the format (equal content is stored once: this is what an honest save of a
    # 64 GiB zero tensor with 16 MiB chunks writes), and checked reading 16 MiB, not 64 GiB.
    assert ok and (chunks_checked, bytes_checked) == (1, 16 * MiB)
