#!/usr/bin/env bash
# The one GPU check (device tool, ~12 minutes on an H100): model correctness + throughput, the tiled pipeline on an
# 8k x 8k raster in memory against the model alone, then training speed.
# Runs with the GPU machine's own python (torch + timm are there); no GDAL needed for these parts.
#   run: bash bench/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
# The device tool stops a command after 600 s: run the parts in separate calls when needed (PARTS="model pipeline"
# then PARTS=train).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PY:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PARTS="${PARTS:-model pipeline train}"
if [[ " $PARTS " == *" model "* ]]; then timeout 330 "$PY" bench/gpu_model_check.py; fi
if [[ " $PARTS " == *" pipeline "* ]]; then
  timeout 240 "$PY" bench/pipeline_speed.py --size 8192 --device cuda --batch-size 64 --compile
fi
if [[ " $PARTS " == *" train "* ]]; then timeout 300 "$PY" bench/train_speed.py --models b l --batch 8 --steps 10; fi
