"""replay.load_state: another run's components at an index, read-only, snapshot first, replay when asked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import replay
import snapshots
from eventlog import EventLog
from replay.loadstate import LoadStateError, ReplayNeededError, load_state
from snapshots import tree
from snapshots.manifest import Manifest
from tests.chunkcopies import region
from tests.cli import tinyjob

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


reference = tinyjob.reference


def fresh_model() -> torch.nn.Linear:
    torch.manual_seed(123)  # not the run's initial weights: a load must overwrite every byte
    return torch.nn.Linear(4, 3)


def same_weights(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """35 entries in two terms; snapshots every 10 (the last 3 kept), the log kept whole."""
    path = tmp_path_factory.mktemp("load") / "run"
    tinyjob.write(path, 25)
    tinyjob.write(path, 10, start=25)
    return path


def snapshot_indexes(path: Path) -> list[int]:
    with snapshots.SnapshotStore(path / "snapshots") as store:
        return [i.index for i in store.list()]


def files(path: Path) -> dict[str, tuple]:
    """Every file and directory under `path` with its size, mtime and content hash, except
    lock.mdb: LMDB readers register in its reader table (shared memory), as they must to
    read beside a writer."""
    out = {}
    for directory, dirs, names in os.walk(path):
        for name in dirs + names:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            if name == "lock.mdb":
                continue
            digest = hashlib.sha256(open(full, "rb").read()).hexdigest() if os.path.isfile(full) else None
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def test_a_snapshot_index_loads_the_model_alone_with_no_user_code_and_writes_nothing(run):
    at = 20
    assert at in snapshot_indexes(run)
    before = files(run)
    model = fresh_model()
    loaded = load_state(run, into={"model": model}, at=at)
    assert (loaded.index, loaded.term, loaded.snapshot, loaded.components) == (20, 1, "20-1", ("model",))
    assert len(loaded.replayed) == 0
    assert same_weights(model, reference(at)["model"])
    assert files(run) == before  # not one byte, name or mtime changed
    with EventLog.open(run / "log", readonly=True) as log:
        assert log.term == 2  # no term bump


def test_between_snapshots_it_needs_ops_and_says_so_then_replays(run):
    with pytest.raises(ReplayNeededError) as e:
        load_state(run, into={"model": fresh_model()}, at=23)
    assert (e.value.index, e.value.nearest) == (23, 20)
    message = str(e.value)
    assert "index 23" in message and "index 20" in message and "ops=" in message and "state=" in message

    before = files(run)
    model, table = fresh_model(), torch.full((3, 4), 7.0)
    loaded = load_state(run, into={"model": model, "table": table}, at=23, ops=tinyjob.ops, state=tinyjob.make_state)
    assert loaded.snapshot == "20-1" and loaded.replayed == range(21, 24) and loaded.term == 1
    expected = reference(23)
    assert same_weights(model, expected["model"]) and torch.equal(table, expected["table"])
    assert files(run) == before


def test_the_default_index_is_the_newest_entry(run):
    model = fresh_model()
    loaded = load_state(run, into={"model": model}, ops=tinyjob.ops, state=tinyjob.make_state)
    assert loaded.index == 35 and loaded.term == 2
    assert same_weights(model, reference(35)["model"])


def test_damage_in_another_component_does_not_stop_a_model_load(run, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-a", str(run), str(copy)], check=True)
    with open(copy / "snapshots" / "manifests" / "30-2", "rb") as f:
        manifest = Manifest.decode("30-2", f.read())
    used: dict[str, set[str]] = {}
    for path, i in tree.tensor_paths(manifest.tree):
        used.setdefault(path[0], set()).update(manifest.chunks[c].id for c, _, _ in manifest.tensors[i].segments)
    (cid,) = used["table"] - used["model"]  # the bare tensor packs apart from the model's state dict
    chunk = region(copy / "snapshots", cid)  # its loose file, or its range in a pack
    chunk.flip(chunk.size - 1)

    model = fresh_model()
    assert load_state(copy, into={"model": model}, at=30).snapshot == "30-2"
    assert same_weights(model, reference(30)["model"])
    with pytest.raises(ReplayNeededError, match="damaged snapshot.*30-2"):
        load_state(copy, into={"table": torch.zeros(3, 4)}, at=30)


def test_bad_requests_are_named(run, tmp_path):
    with pytest.raises(LoadStateError, match="not a journal"):
        load_state(tmp_path, into={"model": fresh_model()})
    for at in (-1, 36, 2.0):
        with pytest.raises(LoadStateError, match=r"outside the journal .* entries are 1\.\.35"):
            load_state(run, into={"model": fresh_model()}, at=at)
    with pytest.raises(snapshots.ComponentNotFoundError, match="'modle'.*model, table, counters"):
        load_state(run, into={"modle": fresh_model()}, at=20)
    with pytest.raises(snapshots.ComponentNotFoundError, match="'modle'"):
        load_state(run, into={"modle": fresh_model()}, at=23, ops=tinyjob.ops, state=tinyjob.make_state)
    with pytest.raises(LoadStateError, match="into="):
        load_state(run, into={"model": object()}, at=20)
    wrong = torch.nn.Linear(5, 3)
    kept = wrong.weight.detach().clone()
    with pytest.raises(snapshots.StateMismatchError, match=r"\['model'\]\['weight'\]"):
        load_state(run, into={"model": wrong}, at=20)
    assert torch.equal(wrong.weight, kept)


def test_it_reads_beside_a_live_writer_that_holds_the_lock(tmp_path):
    path, go = tmp_path / "live", tmp_path / "go"
    tinyjob.write(path, 20)  # snapshots at 10 and 20 (and whatever close adds)
    writer = subprocess.Popen([sys.executable, "-m", "tests.cli.tinyjob", str(path), "--steps", "5", "--start", "20",
                               "--go", str(go)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # the writer has bumped the term and applied its first step: it holds the lock
            with EventLog.open(path / "log", readonly=True) as log:
                if log.last_index >= 21:
                    term = log.term
                    break
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read()
            time.sleep(0.05)
        model = fresh_model()
        assert load_state(path, into={"model": model}, at=10).snapshot == "10-1"
        assert same_weights(model, reference(10)["model"])
        with EventLog.open(path / "log", readonly=True) as log:
            assert log.term == term
    finally:
        go.touch()
        assert writer.wait(60) == 0, writer.stderr.read()


def test_fine_tuning_from_another_run(tmp_path):
    """The README recipe: run A trains a model and optimizer; run B starts from A's model only."""
    ops = replay.Ops()

    @ops.op
    def train_step(state, *, seed, lr):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 4, generator=g)
        loss = state["model"](x).square().mean()
        state["optim"].zero_grad()
        loss.backward()
        state["optim"].step()
        return loss.item()

    def make_run_state(lr):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        return {"model": model, "optim": torch.optim.AdamW(model.parameters(), lr=lr)}

    state_a = make_run_state(1e-2)
    with replay.Journal.open(tmp_path / "pretrain", state=state_a, ops=ops) as journal:
        for step in range(20):
            journal.apply("train_step", seed=step, lr=1e-2)
        journal.snapshot().result()  # the final weights as a snapshot (close may add one too)
    pretrained = {k: v.clone() for k, v in state_a["model"].state_dict().items()}

    state_b = make_run_state(1e-3)
    load_state(tmp_path / "pretrain", into={"model": state_b["model"]})  # the newest entry: 20
    assert all(torch.equal(state_b["model"].state_dict()[k], v) for k, v in pretrained.items())
    with replay.Journal.open(tmp_path / "finetune", state=state_b, ops=ops) as journal:
        for step in range(5):
            journal.apply("train_step", seed=1000 + step, lr=1e-3)
    assert not torch.equal(state_b["model"].weight, pretrained["weight"])
