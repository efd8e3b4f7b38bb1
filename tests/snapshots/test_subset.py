"""Loading part of a snapshot reads and decompresses only the chunks of that part."""

from __future__ import annotations

import torch

from snapshots import tree
from snapshots.manifest import Manifest

from tests.chunkcopies import all_regions

from .conftest import assert_same, small_model_and_optimizer


def _chunks_of(store, name: str) -> dict[str, set[str]]:
    """{top-level component: ids of the chunks its tensors use} from the manifest."""
    with open(f"{store.path}/manifests/{name}", "rb") as f:
        m = Manifest.decode(name, f.read())
    used: dict[str, set[str]] = {}
    for path, i in tree.tensor_paths(m.tree):
        used.setdefault(path[0], set()).update(m.chunks[c].id for c, _, _ in m.tensors[i].segments)
    return used


def test_a_model_only_load_decompresses_no_optimizer_chunk(open_store, monkeypatch):
    store = open_store(chunk_size=1 << 20)  # large chunks: everything small is packed
    model, optim = small_model_and_optimizer()
    info = store.save({"model": model.state_dict(), "optim": optim.state_dict()}, index=5, term=1)
    used = _chunks_of(store, info.manifest_id)
    assert used["model"] and used["optim"] and not used["model"] & used["optim"]  # packs stop at components

    reads = []
    codec = store._reader._codec
    original = codec.read
    # Which chunk a read is, whether a loose file (offset None) or a range of a pack.
    where = {(r.path, r.offset if r.pack else None): r.cid for r in all_regions(store.path)}

    def spy(path, raw_len, stored_len, out, offset=None):
        reads.append(where[(path, offset)])
        return original(path, raw_len, stored_len, out, offset)

    monkeypatch.setattr(codec, "read", spy)
    part = store.load(info, only="model")
    assert sorted(reads) == sorted(used["model"])
    assert_same(part, {"model": model.state_dict()})

    reads.clear()
    fresh = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                                torch.nn.Linear(32, 8))
    store.load_into(info, {"model": fresh.state_dict()}, strict=False)
    assert sorted(reads) == sorted(used["model"])
    assert_same(fresh.state_dict(), model.state_dict())
