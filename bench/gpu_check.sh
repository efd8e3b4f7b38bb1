#!/usr/bin/env bash
# The GPU check, as one script for a machine with a CUDA device (about 4-6 minutes on one
# H100; every step has its own time limit, 8 minutes in all):
#
#   bash bench/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#                                      # (default: python, else python3)
#
# 1. the CUDA tests (every test that needs a GPU; a CUDA test that is skipped fails the
#    check, since skipping is what they do without one), then
# 2. `python -m bench gpu` at 1 GiB, 3 interleaved rounds: save/load/replay of a CUDA
#    state against safetensors-to-CUDA, torch.save and DCP, with bit-exactness checks;
#    results in bench/results/gpu.json.
#
# Needs a CUDA build of torch and the test and bench extras (pip install -e '.[test,bench]').
# Exit status: 0 all passed, 1 a test or check failed, 2 no CUDA device here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3 || echo python)}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing run" >&2
    exit 2
fi
"$PY" -c 'import torch; print("gpu_check:", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The CUDA tests by name: the files hold CPU tests too, which CI runs anyway.
timeout 270 "$PY" -m pytest -q -p no:cacheprovider -rs --timeout 120 \
    tests/snapshots/test_device_load.py tests/replay/test_cuda.py \
    "tests/snapshots/test_async.py::test_cuda_staging_is_fenced_against_later_in_place_updates" \
    "tests/snapshots/test_load_in_place.py::test_a_reload_into_gpu_tensors_goes_through_pinned_buffers" \
    "tests/replay/test_rng.py::test_cuda_dropout_is_reproducible_and_every_device_restored" \
    "tests/replay/test_rng_check.py::test_an_unseeded_draw_on_a_cuda_device_is_caught_and_a_seeded_one_is_not" \
    2>&1 | tee "$log"
tests=${PIPESTATUS[0]}
if grep -Eiq '^SKIPPED.*(cuda|gpu)' "$log"; then
    echo "gpu_check: CUDA tests were skipped on a machine with CUDA (see above)" >&2
    tests=1
fi

timeout 210 "$PY" -m bench gpu --mb 1024 --repeat 3 --entries 400
bench=$?

echo "gpu_check: tests exit $tests, bench exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
