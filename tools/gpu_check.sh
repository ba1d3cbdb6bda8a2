#!/usr/bin/env bash
# The GPU check, in one command: tools/gpu_check.sh OUTDIR
#
# On a machine with an NVIDIA GPU (the device image has cupy-cuda13x, numba and torch):
#   1. prints nvidia-smi (and keeps it in OUTDIR);
#   2. installs what is missing, offline first (the package against what the machine
#      has, plus any wheels in $GPU_CHECK_WHEELS), then from the registry (the [cuda,
#      test, bench] extras); with neither, it runs the checkout from PYTHONPATH;
#   3. launches every CUDA kernel on each of its paths against the NumPy reference
#      (tools/gpu_kernels.py smoke) and stops at the first broken one, naming it;
#   4. runs the GPU tests, stopping at the first failure and naming it: the CUDA
#      backend's own tests, the GPU rows of the implementations table, the CuPy
#      cases of the Dask tests, and fastsoftmax.torch on CUDA tensors (DLPack
#      hand-over, a side stream);
#   5. runs the GPU benchmark subset: the fused cross-entropy, softmax and log-softmax at
#      the Core shapes in float32 and float16, our CUDA kernels ("cupy") against PyTorch
#      on CUDA, with the device's copy bandwidth measured in the same run; the trainer's
#      MNIST-sized epoch with the CuPy step;
#   6. times the raw kernels over launch configurations and compile-time variants, the
#      trainer's epoch each way it can run, and the kernels that keep a row on chip
#      (tools/gpu_kernels.py sweep, sgd, onchip);
#   7. writes pytest-benchmark JSON, the logs and a short summary to OUTDIR (8 files).
# Without a GPU it stops at once, non-zero, saying so.  On an H200 it took 245 s in all
# (each step has a time limit).  On a machine without a registry, carry the wheels of
# what its image lacks (dask and distributed for the Dask case) and point
# GPU_CHECK_WHEELS at them; FASTSOFTMAX_TEST_MNIST points the Dask case at the MNIST
# test files.
#
# GPU_CHECK_KEEP_GOING=1 runs every test and step even after a failure (a first run on
# a new machine, where one report should list everything that is broken).
set -uo pipefail

OUT=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU found (nvidia-smi lists none); nothing was run" >&2
  exit 2
fi
nvidia-smi | tee "$OUT/nvidia-smi.txt"

PY=${PYTHON:-python3}
KEEP_GOING=${GPU_CHECK_KEEP_GOING:-0}
PIP="$PY -m pip install --quiet --disable-pip-version-check"
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  echo "== installing the wheels in $GPU_CHECK_WHEELS"
  timeout 120 $PIP --no-index --no-deps "$GPU_CHECK_WHEELS"/*.whl || echo "gpu_check: some wheels did not install"
fi
echo "== installing the package"
if timeout 120 $PIP --no-index --no-build-isolation --no-deps -e . 2>&1 | tail -3 \
  && $PY -c "import fastsoftmax._kernels" 2>/dev/null; then
  echo "installed offline (editable, against the machine's packages)"
else
  extras="test,bench"
  $PY -c "import cupy" 2>/dev/null || extras="$extras,cuda"
  if timeout 300 $PIP --retries 1 --timeout 15 -e ".[$extras]"; then
    echo "installed .[$extras] from the registry"
  else
    echo "gpu_check: no install possible; running the checkout from PYTHONPATH"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
$PY - <<'EOF' || { echo "gpu_check: CuPy cannot use the GPU" >&2; exit 4; }
import cupy
n = cupy.cuda.runtime.getDeviceCount()
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"CuPy {cupy.__version__}: {n} device(s), device 0 = {props['name'].decode()}")
EOF

echo "== every kernel on each of its paths (first broken kernel stops the check)"
timeout 180 $PY tools/gpu_kernels.py smoke 2>&1 | tee "$OUT/gpu-tests.txt"
smoke_rc=${PIPESTATUS[0]}
if [ "$smoke_rc" -ne 0 ] && [ "$KEEP_GOING" != 1 ]; then
  echo "gpu_check: a kernel is broken (named above); stopping" >&2
  exit 5
fi

echo "== GPU tests (first failure stops the run and is named)"
stop_first="-x"
[ "$KEEP_GOING" = 1 ] && stop_first=""
parallel=""
$PY -c "import xdist" 2>/dev/null && parallel="-n 4"
timeout 300 $PY -m pytest $stop_first $parallel -q -p no:cacheprovider -rfE \
  tests/test_cuda.py tests/test_gpu_peers.py \
  "tests/test_linear.py" "tests/test_dask.py" "tests/test_torch.py" -k "cupy or cuda or gpu" \
  2>&1 | tee -a "$OUT/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}
if [ "$tests_rc" -ne 0 ]; then
  echo "gpu_check: GPU tests failed; first failure:" >&2
  grep -m1 -E "^FAILED|^ERROR" "$OUT/gpu-tests.txt" >&2 || tail -5 "$OUT/gpu-tests.txt" >&2
  [ "$KEEP_GOING" = 1 ] || exit 6
fi

echo "== GPU benchmarks"
timeout 240 $PY -m pytest -q -p no:cacheprovider bench/bench_ops.py \
  -k "(float32 or float16) and (cross_entropy_with_grad or softmax) and (cupy or torch-cuda) and not reference" \
  --benchmark-json="$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "== the trainer's epoch on the GPU (target: <= 10 ms)"
timeout 120 $PY -m pytest -q -p no:cacheprovider bench/bench_train.py -k "epoch_gpu" \
  --benchmark-json="$OUT/gpu-train.json" 2>&1 | tee -a "$OUT/gpu-bench.txt"
train_rc=${PIPESTATUS[0]}

echo "== raw kernels over launch configurations"
timeout 240 $PY tools/gpu_kernels.py sweep --json "$OUT/gpu-sweep.json" 2>&1 \
  | tee "$OUT/gpu-sweep.txt"
sweep_rc=${PIPESTATUS[0]}
timeout 120 $PY tools/gpu_kernels.py sgd 2>&1 | tee -a "$OUT/gpu-sweep.txt"
timeout 120 $PY tools/gpu_kernels.py onchip 2>&1 | tee -a "$OUT/gpu-sweep.txt"

$PY - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
benchmarks = []
for name in ("gpu-bench.json", "gpu-train.json"):
    path = out / name
    if path.exists():
        benchmarks += json.loads(path.read_text())["benchmarks"]
    else:
        print(f"{name}: not written")
print(f"{'case':70s} {'median ms':>10s} {'GB/s':>8s} {'% copy':>7s}")
for b in benchmarks:
    e = b.get("extra_info", {})
    frac = e.get("fraction_of_copy_bandwidth")
    print(
        f"{b['name'][:70]:70s} {b['stats']['median'] * 1e3:10.3f} "
        f"{e.get('GB/s', float('nan')):8.1f} {100 * frac if frac else float('nan'):7.0f}"
    )
EOF

echo "gpu_check: smoke rc=$smoke_rc, tests rc=$tests_rc, benchmarks rc=$bench_rc," \
  "epoch rc=$train_rc, sweep rc=$sweep_rc; results in $OUT"
[ "$smoke_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] \
  && [ "$train_rc" -eq 0 ] && [ "$sweep_rc" -eq 0 ]
