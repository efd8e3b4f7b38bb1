"""Child process of test_sigkill: trains to STEPS under a Journal (or without one, as the reference).

    python sigkill_child.py DIR STEPS journal|reference OUT

Prints "applied <step>" after every step so the parent can time its SIGKILL; on
finishing, saves the final state's fingerprint to OUT.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import replay  # noqa: E402
from tests.replay.models import fingerprint, make_ops, make_state  # noqa: E402

BATCH = 8


def main(root, steps, mode, out):
    # The first run starts from the reference's init; a restarted one from another random
    # init, which recovery must overwrite completely.
    fresh = mode == "reference" or not Path(root).exists()
    state, ops = make_state(seed=0 if fresh else 1 + torch.seed() % 1000), make_ops()
    if mode == "reference":
        train = ops.spec("train_step").handler
        for step in range(steps):
            train(state, ids=state["data"].peek(BATCH), seed=step)
    else:
        with replay.Journal.open(root, state=state, ops=ops, snapshot=replay.Every(entries=15),
                                 durability="group", digest_every=10) as journal:
            print(f"recovered {journal.recovery.entries_replayed}", flush=True)
            # The README idiom: count() skips the digest entries digest_every interleaves.
            for step in range(journal.count(), steps):
                assert step == state["counters"]["steps"], (step, state["counters"])
                journal.apply("train_step", ids=state["data"].peek(BATCH), seed=step)
                print(f"applied {step}", flush=True)
    torch.save(fingerprint(state), out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
