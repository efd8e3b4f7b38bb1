"""A small journal job with an optimizer, for `replay diff` and `replay export` tests:
`tests.cli.optimjob:ops`, `:make_state`. The state holds an encoder/head model and Adam,
whose per-parameter `step` counters are 0-dim tensors that grow by 1 per entry."""

from __future__ import annotations

import torch

import replay

ops = replay.Ops()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def make_state():
    torch.manual_seed(0)
    model = Net()
    return {"model": model, "optim": torch.optim.Adam(model.parameters(), lr=1e-3)}


@ops.op
def train(state, *, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    state["optim"].zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(state["model"](x), y).backward()
    state["optim"].step()


def write(path, steps: int) -> None:
    with replay.Journal.open(path, state=make_state(), ops=ops, snapshot=replay.Every(entries=10),
                             async_snapshots=False) as journal:
        for i in range(steps):
            journal.apply("train", seed=i)
