#!/usr/bin/env bash
# Issue 44 on the lent GPU machine, results under $OUT:
#   logits: the model split over 2 and 4 ranks against the whole model (bf16, 8B shape), beside the bf16 noise floor;
#           on a one-GPU machine every rank runs on cuda:0 over gloo (numerics only)
#   decode: engine decode at batch 1 and 64 (8B shape, dummy weights) at tensor-parallel size 1 and at every size the
#           machine has GPUs for; roofline fractions are per GPU (each GPU's part of the weights and KV)
# Run from the repository root with the wheels from ../shared/tools/gpu-wheels in .whl/.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
gpus=$(nvidia-smi -L | wc -l)
same=""; [ "$gpus" -lt 2 ] && same="--same-device"
timeout 300 python3 bench/gpu/tensor_parallel_logits.py --model llama-3.1-8b --sizes 2,4 $same 2>&1 | tail -5 \
  | tee "$OUT/tensor_parallel_logits.txt"
for size in 1 2 4 8; do
  [ "$size" -gt "$gpus" ] && break
  timeout 200 python3 -m plait bench engine --model llama-3.1-8b --weights dummy --attention-backend triton --no-hf \
    --batch-sizes 1,64 --prompt-len 512 --gen-len 64 --tensor-parallel "$size" \
    --output "$OUT/engine_8b_tp${size}.json" 2>&1 | grep -v "━" | grep -v "^\s*$" | tail -6
done
