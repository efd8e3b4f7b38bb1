"""strace command lines for the fault tests.

Only the syscalls a test injects into are traced. An error or delay injection goes
through a seccomp-bpf filter (``--seccomp-bpf``), so the kernel stops the child on those
syscalls alone: a child that imports torch makes thousands of other syscalls, and
stopping on each of them costs about one CPU-second per child. A signal injection
(``signal=KILL``) does not: strace 6.1 never delivers it under a seccomp filter (the
child runs on unharmed, which a kill test would see as "no call was killed"), so those
children are stopped on every syscall, as before. ``when=N`` counts calls of the
injected syscall either way.
"""

from __future__ import annotations


def injecting(strace: str, spec: str) -> list[str]:
    """`strace` running a command with `-e inject=SPEC` (e.g. ``fdatasync:signal=KILL:when=3``)."""
    syscalls = spec.split(":", 1)[0]
    filtered = [] if "signal=" in spec else ["--seccomp-bpf"]
    return [strace, "-f", "-qq", "-o", "/dev/null", *filtered, "-e", f"trace={syscalls}", "-e", f"inject={spec}"]
