"""A writer in a fresh interpreter, for faults injected from outside the process (strace, rlimits).

    python tests/crash/child.py journal ROOT FD [STEPS [OPTIONS_JSON]]
    python tests/crash/child.py log PATH FD MODE COUNT

Reports over file descriptor FD in the checker's frames (see tests/crash/checker/framing.py). Imports torch
only for the journal writer, so a bare-log child starts in 0.1 s.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.crash.checker import journal_writer, log_writer  # noqa: E402


def main(argv):
    kind, path, fd = argv[0], argv[1], int(argv[2])
    if kind == "journal":
        steps = int(argv[3]) if len(argv) > 3 else None
        options = json.loads(argv[4]) if len(argv) > 4 else {}
        journal_writer(path, fd, steps=steps, **options)
    else:
        log_writer(path, argv[3], fd, count=int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
