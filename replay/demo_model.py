"""The demo's job, shared by the single-process demo (replay/demo.py) and the multi-rank
one (replay/demo_ranks.py): a synthetic dataset, a small MLP and its training step.

Its own module so that neither demo imports the other for it (demo.py only reaches
demo_ranks for ``--ranks``; demo_ranks needs nothing of demo.py).
"""

from __future__ import annotations

import torch

from .rng import seeded_generator

FEATURES, HIDDEN, CLASSES = 32, 128, 10
NUM_SAMPLES = 4096
DROPOUT = 0.1


def synthetic_dataset(seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a random teacher network: the same bytes for the same seed."""
    g = seeded_generator(seed, 1)
    x = torch.randn(NUM_SAMPLES, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(NUM_SAMPLES, CLASSES, generator=g)).argmax(dim=1)
    return x.to(device), y.to(device)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(FEATURES, HIDDEN)
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.hidden = torch.nn.Linear(HIDDEN, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x, dropout_generator=None):
        h = torch.relu(self.norm(self.inp(x)))
        if dropout_generator is not None:
            # Dropout from a payload-seeded generator, not global RNG: replay draws the same mask.
            keep = torch.rand(h.shape, generator=dropout_generator, device="cpu").to(h.device) >= DROPOUT
            h = h * keep / (1 - DROPOUT)
        return self.out(torch.relu(self.hidden(h)))


def train_step(state, x: torch.Tensor, y: torch.Tensor, *, ids, seed, lr) -> None:
    """One AdamW step of the demo model on samples `ids` of (x, y), dropout seeded by `seed`
    (the single-process and the multi-rank demo share it; under DDP, backward all-reduces)."""
    state["data"].consume(ids)
    index = torch.tensor(ids, device=x.device)
    optim = state["optim"]
    for group in optim.param_groups:
        group["lr"] = lr
    optim.zero_grad(set_to_none=True)
    logits = state["model"](x[index], dropout_generator=seeded_generator(seed))
    torch.nn.functional.cross_entropy(logits, y[index]).backward()
    optim.step()
