#!/usr/bin/env bash
# The one GPU check (device tool, ~12 minutes on an H100): model correctness + throughput, the tiled pipeline on an
# 8k x 8k raster in memory against the model alone, then training speed.
# Runs with the GPU machine's own python (torch + timm are there); no GDAL needed for these parts.
#   run: bash bench/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PY:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 420 "$PY" bench/gpu_model_check.py
timeout 240 "$PY" bench/pipeline_speed.py --size 8192 --device cuda --batch-size 64 --compile
timeout 300 "$PY" bench/train_speed.py --models b l --batch 8 --steps 10
