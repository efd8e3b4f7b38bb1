"""The child of test_sigkill, forked from the test process: trains to STEPS under a Journal
(or without one, as the reference).

Reports ("applied", step) after every step over its frame pipe (tests/crash/checker/framing.py)
so the parent can time its SIGKILL; on finishing, saves the final state's fingerprint to OUT.
"""

import torch

import replay
from tests.crash.checker.framing import send
from tests.replay.models import fingerprint, make_ops, make_state

BATCH = 8


def train(root, steps, mode, out, out_fd):
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive the fork
    # The first run starts from the reference's init; a restarted one from another random
    # init, which recovery must overwrite completely.
    fresh = mode == "reference" or not root.exists()
    state, ops = make_state(seed=0 if fresh else 1 + torch.seed() % 1000), make_ops()
    if mode == "reference":
        handler = ops.spec("train_step").handler
        for step in range(steps):
            handler(state, ids=state["data"].peek(BATCH), seed=step)
    else:
        with replay.Journal.open(root, state=state, ops=ops, snapshot=replay.Every(entries=15),
                                 durability="group", digest_every=10) as journal:
            # The README idiom: count() skips the digest entries digest_every interleaves.
            for step in range(journal.count(), steps):
                assert step == state["counters"]["steps"], (step, state["counters"])
                journal.apply("train_step", ids=state["data"].peek(BATCH), seed=step)
                send(out_fd, ("applied", step))
    torch.save(fingerprint(state), out)
