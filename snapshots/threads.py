"""Worker threads that run torch kernels without torch's own intra-op threads.

A store already works on several chunks at once, one per worker thread. With torch's
OpenMP backend, each worker that runs a large kernel (byte grouping, copies) would also
fork an OpenMP team of `torch.get_num_threads()` threads, which then spin waiting for
more work: on a 2-core machine 4 workers meant up to 8 busy threads, and the spinning
alone took about a tenth of a save's CPU time (perf, 256 MiB state).

OpenMP keeps the thread count per thread (the nthreads-var ICV of the calling thread's
task), so `omp_set_num_threads(1)` called from a worker affects that worker only: the
caller's threads and torch's global setting are untouched (`torch.set_num_threads`
would change the default of every thread created later). torch initializes a thread's
OpenMP setting lazily, on its first parallel kernel, so `worker_init` triggers that first.
"""

from __future__ import annotations

import ctypes
import os

import torch

_OPENMP_NAMES = ("libgomp", "libiomp", "libomp")
_omp_set_num_threads = None
_looked = False


def _find_omp_set_num_threads():
    """omp_set_num_threads of the OpenMP runtime torch loaded, or None."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        if os.path.basename(path).startswith(_OPENMP_NAMES):
            try:
                fn = ctypes.CDLL(path).omp_set_num_threads
            except (OSError, AttributeError):
                continue
            fn.argtypes = (ctypes.c_int,)
            fn.restype = None
            return fn
    return None


def worker_init() -> None:
    """Make torch kernels run single-threaded on the calling (worker) thread. Best effort:
    without an OpenMP runtime to talk to, nothing changes."""
    global _omp_set_num_threads, _looked
    if not _looked:
        _omp_set_num_threads = _find_omp_set_num_threads()
        _looked = True
    if _omp_set_num_threads is None or torch.get_num_threads() == 1:
        return  # get_num_threads() also ran torch's lazy per-thread initialization
    _omp_set_num_threads(1)
