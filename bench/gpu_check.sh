#!/usr/bin/env bash
# The GPU check of the LLaMA engine, for a lent GPU machine (the device tool; see bench/README.md).
# Prepare here once:  python bench/bench_gpu_engine.py --save-tokenizer .gpu/tokenizer
#                     echo /.gpu/ >> .git/info/exclude
# Then run on the device with carry [".gpu"] and a timeout of 480 s:  bash bench/gpu_check.sh
# Needs only torch and transformers (both in the device image) and this checkout; no model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
# Llama-3-8B shape in bf16; every sentence of the synthetic notes plus one RE prompt per gold entity.
timeout 420 python3 bench/bench_gpu_engine.py --device cuda --shape llama3-8b --dtype bf16 \
  --tokenizer .gpu/tokenizer --batch-size 64 --plain 3 --repeats 3 --out "$out/gpu_engine.json" 2>&1 | tee "$out/gpu_engine.log"
