#!/usr/bin/env bash
# The prepared GPU check of issue 12: ONE run on the lent H200, at most 8 minutes (README "GPU check" has the exact
# `run` call). Steps: (1) install the wheels carried in .whl/ (benchmarks/fetch_gpu_wheels.sh) into /tmp/site,
# (2) pytest -m cuda on the test files that hold CUDA tests, (3) benchmarks/gpu_check.py: every stage timed at the
# reference configuration, (4) JSON + markdown (+ logs) written to $OUT.
#   bash benchmarks/gpu_check.sh            # on the GPU machine ($OUT set by the run tool)
#   bash benchmarks/gpu_check.sh --dry-run  # here: no install, no pytest, tiny sizes on the CPU (what CI runs)
# Time plan (s): install ~10, pytest <= PYTEST_S (100), stages <= STAGES_S (300), slack ~60: < 8 min in all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
start=$(date +%s)
if [ "${1:-}" = "--dry-run" ]; then
  shift
  PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_check.py --dry-run --out "$OUT" "$@"
  exit $?
fi
export PYTHONUNBUFFERED=1
# (1) wheels -> /tmp/site (no registry can be reached there); tusss itself from the working tree
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/install.log" 2>&1 || { echo "wheel install failed:"; cat "$OUT/install.log"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in .whl/ (run benchmarks/fetch_gpu_wheels.sh here and carry .whl)"; export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia_smi.csv" 2>&1
"$PY" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for m in ("triton", "segment_anything", "open_clip", "ftfy", "torchvision", "cupy", "tusss"):
    try:
        mod = __import__(m); print(m, getattr(mod, "__version__", "ok"), getattr(mod, "__file__", ""))
    except Exception as e:
        print(m, "MISSING", type(e).__name__, e)
PY
echo "setup took $(( $(date +%s) - start )) s"
# (2) CUDA tests (only the files that have them: other files may import service packages the machine lacks)
if [ "${PYTEST_S:-100}" != 0 ]; then
  files=$(grep -l "pytest.mark.cuda" tests/test_*.py | tr '\n' ' ')
  timeout -k 5 "${PYTEST_S:-100}" "$PY" -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors \
    -o addopts="" $files > "$OUT/pytest_cuda.log" 2>&1
  echo "pytest -m cuda: rc=$? ($(tail -n 1 "$OUT/pytest_cuda.log"))" | tee -a "$OUT/env.txt"
fi
echo "tests done at $(( $(date +%s) - start )) s"
# (3) + (4) every stage, with its budget; the script writes gpu_check.json / gpu_check.md after each stage
timeout -k 10 "$(( ${STAGES_S:-300} + 45 ))" "$PY" benchmarks/gpu_check.py --out "$OUT" --total-s "${STAGES_S:-300}" "$@" \
  2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check rc=$rc, total $(( $(date +%s) - start )) s"
exit $rc
