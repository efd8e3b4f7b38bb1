"""`replay diff --top K` ranks tensors with at least one dimension before 0-dim scalars
(optimizer step counters), then by the norm of the change."""

from __future__ import annotations

import json

import pytest

from tests.cli import optimjob

OPS = ["--ops", "tests.cli.optimjob:ops", "--state", "tests.cli.optimjob:make_state"]


@pytest.fixture(scope="module")
def optim_journal(tmp_path_factory):
    path = tmp_path_factory.mktemp("optim") / "run"
    optimjob.write(path, 26)
    return path


def test_top_lists_weights_before_optimizer_step_counters(optim_journal, cli_here):
    status, out, err = cli_here("diff", optim_journal, 20, 26, *OPS, "--json")
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    steps = [r for r in rows if r["name"].endswith(".step")]
    weights = [r for r in rows if r["name"].startswith("model.")]
    assert steps and weights
    # the premise: a step counter's change (20 -> 26) is larger than any weight's
    assert min(r["norm"] for r in steps) > max(r["norm"] for r in weights)

    status, out, err = cli_here("diff", optim_journal, 20, 26, *OPS, "--json", "--top", 3, "--only", "model,optim")
    assert status == 0, err
    top = [json.loads(line) for line in out.splitlines()]
    tensors = sorted((r for r in rows if not r["kind"].endswith("[]") and r["norm"] is not None),
                     key=lambda r: r["norm"], reverse=True)
    assert [r["name"] for r in top] == [r["name"] for r in tensors[:3]]
    assert not any(r["name"].endswith(".step") for r in top)

    # asked for more than there are tensors, the scalars follow them
    status, out, err = cli_here("diff", optim_journal, 20, 26, *OPS, "--json", "--top", 1000)
    ranked = [json.loads(line)["name"] for line in out.splitlines()]
    first_scalar = min(i for i, n in enumerate(ranked) if n.endswith(".step"))
    assert all(n.endswith(".step") for n in ranked[first_scalar:])


def test_top_help_says_how_it_ranks(cli_here, capsys):
    with pytest.raises(SystemExit):
        cli_here("diff", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "before 0-dim scalars" in text
