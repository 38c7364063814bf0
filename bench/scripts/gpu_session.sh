#!/usr/bin/env bash
# One call on the lent GPU machine: CUDA correctness tests, then engine and cache benchmarks, results under $OUT.
# Run from the repository root with the wheels from ../shared/tools/gpu-wheels carried in .whl/.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
python3 -m pytest tests/engine/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
for model in llama-3.1-8b llama-3.2-1b; do
  python3 -m plait bench engine --model "$model" --weights dummy --kv-slots 65536 --batch-sizes 1,16,64 \
    --prompt-len 512 --gen-len 32 --repeats 2 --output "$OUT/engine_${model}.json" 2>&1 | grep -v "━" | tail -14
done
python3 -m plait bench cache --model llama-3.2-1b --weights dummy --agent-prompt-len 2048 --rounds 4 \
  --output "$OUT/cache_llama-3.2-1b.json" 2>&1 | grep -v "━" | tail -24
