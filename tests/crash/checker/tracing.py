"""strace command lines for the fault tests.

Only the syscalls a test injects into are traced, and through a seccomp-bpf filter
(``--seccomp-bpf``), so the kernel stops the child on those alone: a child that imports
torch makes thousands of other syscalls, and stopping on each of them cost about one
CPU-second per child. ``when=N`` counts calls of the injected syscall either way.
"""

from __future__ import annotations


def injecting(strace: str, spec: str) -> list[str]:
    """`strace` running a command with `-e inject=SPEC` (e.g. ``fdatasync:signal=KILL:when=3``)."""
    syscalls = spec.split(":", 1)[0]
    return [strace, "-f", "-qq", "-o", "/dev/null", "--seccomp-bpf", "-e", f"trace={syscalls}", "-e", f"inject={spec}"]
