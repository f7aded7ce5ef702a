#!/usr/bin/env bash
# GPU check (one H100, < 8 min): self-train VDSR and EDSR-baseline on a simulated physical pair
# to early stop; report wall time, out-of-sample ΔPSNR and inference ms/MPix. Needs CUDA torch.
# Usage: benchmarks/gpu_check.sh [extra args for gpu_check.py, e.g. --epochs 20 --tiled]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY -m pip install -q --no-deps -e . 2>/dev/null || export PYTHONPATH=$PWD/src
PYTHONUNBUFFERED=1 $PY benchmarks/gpu_check.py "$@"
