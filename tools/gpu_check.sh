#!/usr/bin/env bash
# The GPU check, in one command: tools/gpu_check.sh OUTDIR
#
# On a machine with an NVIDIA GPU (the device image has cupy-cuda13x, numba and torch):
#   1. prints nvidia-smi (and keeps it in OUTDIR);
#   2. installs what is missing: the package with its test and bench extras (CuPy is
#      taken from the image when present, else the [cuda] extra);
#   3. runs the GPU tests, stopping at the first failure and naming it: the CUDA
#      backend's own tests, the GPU rows of the implementations table, the CuPy
#      cases of the linear cross-entropy and Dask tests, and fastsoftmax.torch on CUDA
#      tensors (DLPack hand-over, a side stream);
#   4. runs the GPU benchmark subset: the fused cross-entropy and softmax at the Core
#      shapes, our CUDA kernels ("cupy") against PyTorch on CUDA, with the device's
#      copy bandwidth measured in the same run;
#   5. writes pytest-benchmark JSON, the test logs and a short summary to OUTDIR.
# Without a GPU it stops at once, non-zero, saying so.  Meant to fit in ~8 minutes on an
# H100/H200 (each step has a time limit).  Also times the trainer's epoch with the CuPy
# step (bench_train.py -k epoch_gpu).  Not yet here: float16 benchmark cases.
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
extras="test,bench"
$PY -c "import cupy" 2>/dev/null || extras="$extras,cuda"
echo "== installing .[$extras]"
timeout 300 $PY -m pip install --quiet --disable-pip-version-check -e ".[$extras]" \
  || { echo "gpu_check: pip install failed" >&2; exit 3; }
$PY - <<'EOF' || { echo "gpu_check: CuPy cannot use the GPU" >&2; exit 4; }
import cupy
n = cupy.cuda.runtime.getDeviceCount()
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"CuPy {cupy.__version__}: {n} device(s), device 0 = {props['name'].decode()}")
EOF

echo "== GPU tests (first failure stops the run and is named)"
timeout 240 $PY -m pytest -x -q -p no:cacheprovider -rf \
  tests/test_cuda.py tests/test_gpu_peers.py \
  "tests/test_linear.py" "tests/test_dask.py" "tests/test_torch.py" -k "cupy or cuda or gpu" \
  --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}
if [ "$tests_rc" -ne 0 ]; then
  echo "gpu_check: GPU tests failed; first failure:" >&2
  grep -m1 -E "^FAILED|^ERROR" "$OUT/gpu-tests.txt" >&2 || tail -5 "$OUT/gpu-tests.txt" >&2
fi

echo "== GPU benchmarks"
timeout 240 $PY -m pytest -q -p no:cacheprovider bench/bench_ops.py \
  -k "float32 and (cross_entropy_with_grad or softmax) and (cupy or torch-cuda) and not reference" \
  --benchmark-json="$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "== the trainer's epoch on the GPU (target: <= 10 ms)"
timeout 120 $PY -m pytest -q -p no:cacheprovider bench/bench_train.py -k "epoch_gpu" \
  --benchmark-json="$OUT/gpu-train.json" 2>&1 | tee "$OUT/gpu-train.txt"
train_rc=${PIPESTATUS[0]}

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

echo "gpu_check: tests rc=$tests_rc, benchmarks rc=$bench_rc, epoch rc=$train_rc; results in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$train_rc" -eq 0 ]
