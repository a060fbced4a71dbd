#!/usr/bin/env bash
# Download the wheels that the GPU machine lacks into .whl/ (ignored by git), for benchmarks/gpu_check.sh.
#
# The GPU machine (python 3.12, x86-64, torch 2.11 + torchvision, triton 3.6, numpy, scipy, scikit-learn,
# opencv, onnxruntime (CPU), timm, huggingface-hub, safetensors, regex, tqdm, pytest) cannot reach any
# registry, so what tusss needs beyond that travels with the working tree (64 MiB at most, tree included):
#   segment-anything  (SAM network + AMG utilities; pure python, no deps)
#   open_clip_torch   (DBA-CLIP backbone; its deps torch/torchvision/regex/ftfy/tqdm/huggingface-hub/
#                      safetensors/timm are on the machine except ftfy)
#   ftfy, wcwidth     (ftfy's only dependency)
# Not carried: faiss (the GPU kNN is exact PyTorch top-k; tusss imports faiss lazily), TensorRT (too big;
# the engine rows that need it are skipped by gpu_check.py), onnxruntime-gpu (not needed by the check).
# Pins: the versions this repository is tested with (.venv), all pure-python wheels ('py3-none-any').
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
WHEELS=(
  "segment-anything==1.0"
  "open_clip_torch==3.3.0"
  "ftfy==6.3.1"
  "wcwidth==0.9.4"
)
# segment-anything 1.0 is published on PyPI as a source distribution only: build its wheel locally
# (pure python, so the wheel built here installs unchanged on the GPU machine).
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  if [ "$name" = "segment-anything" ]; then
    python3 -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$spec" \
      || python3 -m pip wheel -q --no-deps -w "$DEST" "$spec"
  else
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$spec"
  fi
done
# exactly one version of each (two would stop the install on the GPU machine)
dups=$(ls "$DEST"/*.whl | xargs -n1 basename | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dups" ]; then echo "more than one version of: $dups (clean $DEST)" >&2; exit 1; fi
du -ch "$DEST"/*.whl
