#!/usr/bin/env bash
# Wheel smoke test: build the wheel, install it (without dependencies) into a fresh virtual environment whose
# dependencies come from an existing one (a .pth file adds that environment's site-packages), and run the console
# commands from it outside the source tree. What a user of `pip install tusss` gets, without a second download
# of torch & co.
#
#   .ci/wheel_smoke.sh [PYTHON]     PYTHON: interpreter of the environment that holds the dependencies
#                                   (default: `python` on PATH, e.g. the activated CI venv)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
BASE_PY=${1:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tusss-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say() { echo "[wheel-smoke] $*"; }

say "build the wheel"
# build isolation (pip fetches the build backend named in pyproject.toml); TUSSS_WHEEL_NO_ISOLATION=1 builds with
# the setuptools of $BASE_PY instead (offline machines)
"$BASE_PY" -m pip wheel -q --no-deps ${TUSSS_WHEEL_NO_ISOLATION:+--no-build-isolation} -w "$WORK/dist" "$SRC"
WHEEL=$(ls "$WORK"/dist/tusss-*.whl)
# the JSON model configs and recipe data must be inside the wheel (a non-editable install has nothing else)
"$BASE_PY" - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["tusss/clip/model_configs/tusss-tiny.json", "tusss/cli/__init__.py", "tusss/engine/cli.py",
        "tusss/kernels/__init__.py", "tusss/export/__init__.py"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
print(f"[wheel-smoke] {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files")
PY

say "fresh venv, dependencies from $BASE_PY"
"$BASE_PY" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
BASE_SITE=$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NEW_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$BASE_SITE" > "$NEW_SITE/_tusss_ci_base_site.pth"  # appended after the venv's own site-packages
"$PY" -m pip install -q --no-deps --no-index "$WHEEL"

cd "$WORK"  # outside the source tree: nothing can come from the checkout
export PATH="$WORK/venv/bin:$PATH" TUSSS_OFFLINE=1 TUSSS_HOME="$WORK/home" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY" - <<'PY'
import pathlib, sys, tusss
p = pathlib.Path(tusss.__file__).resolve()
assert str(p).startswith(sys.prefix), f"tusss imported from {p}, not from the wheel in {sys.prefix}"
from tusss.engine import Engine  # noqa: F401  (public API)
print(f"[wheel-smoke] tusss {tusss.__version__} from {p.parent}")
PY
tusss --version
tusss --help > /dev/null
tusss-engine --help > /dev/null

say "tusss-engine build (needs the packaged tusss-tiny JSON config)"
tusss-engine build --sam vit_tiny --clip tusss-tiny --weights random --graphs clip_text --no-optimize \
  --out "$WORK/engine" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
tusss-engine info "$WORK/engine"

say "tusss segment on a generated image"
"$PY" -c "import numpy as np; from PIL import Image; \
Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save('img.png')"
tusss segment img.png --classes "cat,dog" --out "$WORK/seg" --sam vit_tiny --checkpoint random \
  --clip tusss-tiny --weights random --no-progress --sam-opt points_per_side=2 --sam-opt crop_n_layers=0 \
  --clip-opt target_size=64 --clip-opt 'window_sizes=[32]' --clip-opt stride_divisor=1 2> "$WORK/seg.log" \
  || { cat "$WORK/seg.log"; exit 1; }
test -s "$WORK/seg/labels/img.png" && test -s "$WORK/seg/masks/img.json"
say "PASSED"
