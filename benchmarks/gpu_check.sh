#!/usr/bin/env bash
# GPU check (one H100/H200, < 8 min): paired LB-NLM output MPix/s on the GPU and in numpy on the
# CPU (exact path and default, 2048² image); self-train VDSR and EDSR-baseline on a simulated
# physical pair to early stop; report wall time, out-of-sample ΔPSNR and inference MPix/s on the
# GPU (fp32, AMP) and the CPU. Needs CUDA torch for GPU numbers; without a GPU it runs on the CPU.
# Usage: benchmarks/gpu_check.sh [extra args for gpu_check.py, e.g. --epochs 20 --tiled]
# CPU smoke test: benchmarks/gpu_check.sh --lbnlm-side 128 --models vdsr:vdsr-tiny --epochs 1 \
#     --patience 1 --lr-shape 320x384 --cpu-crop 32
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
# This checkout's source first; never pip-installs (that would repoint an existing install).
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PYTHONUNBUFFERED=1 $PY benchmarks/gpu_check.py "$@"
