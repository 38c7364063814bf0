#!/usr/bin/env bash
# Issue 5 on the lent GPU: part "check" (kernel tests, attention timing, triton vs torch logits) or part "bench"
# (engine roofline fractions, overlap on/off, grammar overhead), results under $OUT. Run from the repository root
# with the wheels from ../shared/tools/gpu-wheels in .whl/ and the Llama-3 vocabulary in .gpu_data/.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
strip() { grep -v "━"; }
if [ "${1:-check}" = check ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_triton_attention.py -x 2>&1 | tail -6 \
    | tee "$OUT/triton_gpu_tests.txt"
  timeout 150 python3 bench/gpu/attention_check.py --quick 2>&1 | tail -25
  timeout 150 python3 bench/gpu/triton_vs_torch_logits.py 2>&1 | tail -6
else
  E="--weights dummy --attention-backend triton --no-hf"
  timeout 120 python3 -m plait bench engine --model llama-3.1-8b $E --batch-sizes 1 --prompt-len 512 --gen-len 64 \
    --output "$OUT/engine_8b_b1_ctx512.json" 2>&1 | strip | tail -9
  timeout 120 python3 -m plait bench engine --model llama-3.1-8b $E --batch-sizes 64 --prompt-len 1024 --gen-len 64 \
    --output "$OUT/engine_8b_b64_ctx1024.json" 2>&1 | strip | tail -9
  timeout 90 python3 -m plait bench engine --model llama-3.2-1b $E --batch-sizes 1 --prompt-len 512 --gen-len 64 \
    --output "$OUT/engine_1b_b1.json" 2>&1 | strip | tail -9
  timeout 120 python3 -m plait bench engine --model llama-3.1-8b $E --batch-sizes 4 --prompt-len 2048 --gen-len 4 \
    --max-batch-tokens 8192 --chunk-size 2048 --output "$OUT/engine_8b_prefill_4x2048.json" 2>&1 | strip | tail -9
fi
