#!/usr/bin/env bash
# GPU measurements in one go (<= 8 min on one H200): a ~0.5B-from-~1.5B KD step (tokens/s, MFU),
# the fused loss at Liger-Kernel's shapes (naive / chunked / fused), DDP and FSDP2 smoke with NCCL.
# Needs only torch, lightning and transformers; this repository goes on PYTHONPATH.
#   bash bench/gpu.sh OUT_DIR            # writes OUT_DIR/gpu.json (and one JSON per part)
#   bash bench/gpu.sh OUT_DIR --smoke    # tiny sizes, runs on a CPU: how it is tested without a GPU
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: bash bench/gpu.sh OUT_DIR [--smoke]" >&2; exit 2; fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$1"; shift
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" "$repo/bench/gpu.py" --out "$out" "$@"
