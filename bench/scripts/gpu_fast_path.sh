#!/usr/bin/env bash
# Issue 5 on the lent GPU, in three parts of under 10 minutes each, results under $OUT:
#   check: triton kernel tests at full shapes, attention kernels vs torch, triton vs torch logits (bf16 and fp32)
#   bench: engine roofline fractions (8B b1 ctx512, 8B b1-256 ctx1024 and 1B b1-256 next to HF, 8B prefill 4x2048)
#   extra: CPU overhead per decode step at batch 128 with the overlap on and off; grammar overhead on the fast path
#   diag: GPU kernel tests, where a batch-128 decode step's time goes, small-batch attention and projection variants
#   b1: kernel tests; batch-1 decode with the one-row GEMV on and off; per-layer logits
#   small: where the two logits paths part (per layer, mixed paths); where a batch-1 step's time goes (8B and 1B)
#   variants MODEL BATCH CONTEXT NAME:FLAGS...: decode of one shape under engine_variants.py overrides, one run each
#   pdl: kernel tests with PDL; decode at batch 1 (8B, 1B) and 64 (8B) with PDL on and off, and the 8B Q/K/V in the GEMV
#   logits: triton vs torch logits with the P @ V product and the residual stream in float32 or bfloat16
#   long [BEFORE]: issue 45's long-prompt table: kernel tests, extend variants (next to the kernel of BEFORE, a
#          checkout of an earlier plait, when given), then 8B prefill of one 32k prompt, of 32k in 8k chunks, of
#          4 x 2k and 8B decode at batch 1/64/256 with this tree and with BEFORE's (one run each)
#   host1b: issue 45 item 2's profile of the host: cProfile of a 1B batch-64 decode run, the top functions by own time
#   noise: the bf16 noise floor of the logits (the torch path against itself with one weight one ulp off), then the
#          triton vs torch logits check
# Run from the repository root with the wheels from ../shared/tools/gpu-wheels in .whl/ and the Llama-3 vocabulary
# in .gpu_data/.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
strip() { grep -v "━" | grep -v "^\s*$"; }
E="--weights dummy --attention-backend triton"
case "${1:-check}" in
host1b)
  timeout 150 python3 -m cProfile -o "$OUT/host_1b_b64.prof" -m plait bench engine --model llama-3.2-1b $E --no-hf \
    --no-roofline --batch-sizes 64 --prompt-len 512 --gen-len 512 --max-batch-tokens 16384 \
    --output "$OUT/engine_1b_b64_profiled.json" 2>&1 | strip | tail -3
  python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(45)" \
    "$OUT/host_1b_b64.prof" 2>&1 | grep -v "^$" | cut -c1-200 | tee "$OUT/host_1b_b64.txt" | head -60
  ;;
long)
  BEFORE=${2:-}
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/engine/test_triton_attention.py 2>&1 | tail -3 \
    | tee "$OUT/gpu_tests.txt"
  timeout 240 python3 bench/gpu/extend_variants.py ${BEFORE:+--previous "$BEFORE/plait/engine/kernels/extend_attention.py"} \
    2>&1 | grep -v Warning | tee "$OUT/extend_variants.txt"
  L="--model llama-3.1-8b $E --no-hf --gen-len 4"
  for tree in ${BEFORE:+before} after; do
    P=/tmp/site:$PWD; [ $tree = before ] && P=$(realpath "$BEFORE"):/tmp/site
    PYTHONPATH=$P timeout 120 python3 -m plait bench engine $L --batch-sizes 1 --prompt-len 32768 --max-context 33280 \
      --max-batch-tokens 32768 --chunk-size 32768 --output "$OUT/engine_8b_prefill_32k_$tree.json" 2>&1 | strip | tail -3
    PYTHONPATH=$P timeout 120 python3 -m plait bench engine $L --batch-sizes 1 --prompt-len 32768 --max-context 33280 \
      --max-batch-tokens 8192 --chunk-size 8192 --output "$OUT/engine_8b_prefill_32k_chunk8k_$tree.json" 2>&1 \
      | strip | tail -3
    PYTHONPATH=$P timeout 110 python3 -m plait bench engine $L --batch-sizes 4 --prompt-len 2048 \
      --max-batch-tokens 8192 --chunk-size 2048 --output "$OUT/engine_8b_prefill_4x2k_$tree.json" 2>&1 | strip | tail -3
    PYTHONPATH=$P timeout 150 python3 -m plait bench engine --model llama-3.1-8b $E --no-hf --batch-sizes 1,64,256 \
      --prompt-len 1024 --gen-len 64 --max-batch-tokens 16384 --chunk-size 1024 \
      --output "$OUT/engine_8b_decode_$tree.json" 2>&1 | strip | tail -5
  done
  ;;
noise)
  timeout 200 python3 bench/gpu/triton_vs_torch_logits.py --noise-floor 2>&1 | tail -3 | tee "$OUT/logits_noise_floor.txt"
  timeout 240 python3 bench/gpu/triton_vs_torch_logits.py 2>&1 | tail -8 | tee "$OUT/logits_check.txt"
  ;;
check)
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/engine/test_triton_attention.py tests/engine/test_fused_ops.py \
    tests/engine/test_gpu.py 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
  timeout 60 python3 bench/gpu/decode_profile.py 2>&1 | tail -15 | tee "$OUT/decode_profile_8b_b1.txt"
  timeout 120 python3 bench/gpu/attention_check.py --quick 2>&1 | tail -22 | tee "$OUT/attention_check.txt"
  timeout 240 python3 bench/gpu/triton_vs_torch_logits.py 2>&1 | tail -8 | tee "$OUT/logits_check.txt"
  ;;
bench)
  timeout 110 python3 -m plait bench engine --model llama-3.1-8b $E --no-hf --batch-sizes 1 --prompt-len 512 \
    --gen-len 64 --output "$OUT/engine_8b_b1_ctx512.json" 2>&1 | strip | tail -7
  timeout 110 python3 -m plait bench engine --model llama-3.1-8b $E --no-hf --batch-sizes 4 --prompt-len 2048 \
    --gen-len 4 --max-batch-tokens 8192 --chunk-size 2048 --output "$OUT/engine_8b_prefill_4x2048.json" 2>&1 \
    | strip | tail -7
  timeout 150 python3 -m plait bench engine --model llama-3.1-8b $E --no-hf --batch-sizes 1,16,64,256 \
    --prompt-len 1024 --gen-len 64 --max-batch-tokens 16384 --chunk-size 1024 --output "$OUT/engine_8b_ctx1024.json" 2>&1 | strip | tail -14
  timeout 100 python3 -m plait bench engine --model llama-3.2-1b $E --no-hf --batch-sizes 1,16,64,256 \
    --prompt-len 512 --gen-len 64 --max-batch-tokens 16384 --output "$OUT/engine_1b_ctx512.json" 2>&1 | strip | tail -14
  for overlap in on off; do
    timeout 110 python3 -m plait bench engine --model llama-3.1-8b $E --no-hf --no-roofline --batch-sizes 128 \
      --prompt-len 1024 --gen-len 64 --max-batch-tokens 16384 --chunk-size 1024 --overlap $overlap --output "$OUT/engine_8b_b128_overlap_$overlap.json" 2>&1 \
      | strip | tail -5
  done
  ;;
diag)
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/engine/test_triton_attention.py tests/engine/test_fused_ops.py \
    tests/engine/test_gpu.py tests/engine/test_residual_precision.py 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
  timeout 150 python3 bench/gpu/step_breakdown.py --batch 128 --prompt-len 1024 2>&1 | tail -45 \
    | tee "$OUT/step_breakdown_8b_b128.txt"
  timeout 200 python3 bench/gpu/decode_variants.py 2>&1 | tail -30 | tee "$OUT/decode_variants.txt"
  ;;
b1)
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/engine/test_triton_attention.py tests/engine/test_fused_ops.py \
    2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
  G=plait.engine.kernels.gemv.MAX_WEIGHT_BYTES
  for model in llama-3.1-8b llama-3.2-1b; do
    for variant in "gemv:" "cublas:--set $G=0"; do
      name=${variant%%:*}
      timeout 100 python3 bench/gpu/engine_variants.py ${variant#*:} -- bench engine --model $model $E --no-hf \
        --batch-sizes 1 --prompt-len 512 --gen-len 64 --output "$OUT/engine_${model}_b1_$name.json" 2>&1 \
        | grep "decode roof" | sed "s/^/$name /" | tee -a "$OUT/b1_variants.txt"
    done
  done
  timeout 240 python3 bench/gpu/triton_vs_torch_logits.py --per-layer 2>&1 | tail -9 | tee "$OUT/logits_per_layer.txt"
  ;;
variants)
  model=$2 batch=$3 ctx=$4
  shift 4
  for variant in "$@"; do
    name=${variant%%:*}
    timeout 120 python3 bench/gpu/engine_variants.py ${variant#*:} -- bench engine --model $model $E --no-hf \
      --batch-sizes $batch --prompt-len $ctx --gen-len 64 --max-batch-tokens 16384 --chunk-size 1024 \
      --output "$OUT/engine_${model}_b${batch}_$name.json" 2>&1 | grep "decode roof" \
      | sed "s/^/$model b$batch $name /" | tee -a "$OUT/variants.txt"
  done
  ;;
pdl)
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/engine/test_triton_attention.py tests/engine/test_fused_ops.py \
    tests/engine/test_gpu.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
  P=plait.engine.kernels.pdl.ENABLED
  G=plait.engine.kernels.gemv.MAX_WEIGHT_BYTES
  for model in llama-3.1-8b llama-3.2-1b; do
    bash "$0" variants $model 1 512 "pdl:" "nopdl:--set $P=False" "pdl_gemv64:--set $G=67108864" "pdl_b1_again:"
  done
  bash "$0" variants llama-3.1-8b 64 1024 "pdl:" "nopdl:--set $P=False"
  ;;
small)
  timeout 110 python3 -m plait bench engine --model llama-3.1-8b $E --no-hf --batch-sizes 1 --prompt-len 512 \
    --gen-len 64 --output "$OUT/engine_8b_b1_ctx512.json" 2>&1 | strip | tail -4
  timeout 100 python3 -m plait bench engine --model llama-3.2-1b $E --no-hf --batch-sizes 1 --prompt-len 512 \
    --gen-len 64 --output "$OUT/engine_1b_b1_ctx512.json" 2>&1 | strip | tail -4
  timeout 200 python3 bench/gpu/gemv_cold.py 2>&1 | tail -12 | tee "$OUT/gemv_cold.txt"
  timeout 300 python3 bench/gpu/triton_vs_torch_logits.py --per-layer 2>&1 | tail -9 | tee "$OUT/logits_per_layer.txt"
  for model in llama-3.1-8b llama-3.2-1b; do
    timeout 120 python3 bench/gpu/step_breakdown.py --model $model --batch 1 --prompt-len 512 --top 24 2>&1 \
      | head -48 | tee "$OUT/step_breakdown_${model}_b1.txt"
  done
  ;;
logits)
  for variant in "--pv float32 --residual float32" "--pv bfloat16 --residual float32" \
    "--pv float32 --residual model" "--pv bfloat16 --residual model"; do
    timeout 150 python3 bench/gpu/triton_vs_torch_logits.py $variant 2>&1 | tail -4 | tee -a "$OUT/logits_check.txt"
  done
  ;;
extra)
  timeout 200 python3 -m plait bench engine --model llama-3.1-8b $E --batch-sizes 1,16,64 --prompt-len 512 \
    --gen-len 32 --output "$OUT/engine_8b_vs_hf.json" 2>&1 | strip | tail -12
  timeout 300 python3 -m plait bench grammar overhead --model llama-3.1-8b $E \
    --tokenizer .gpu_data/ggml-vocab-llama-bpe.gguf --batch 64 --prompt-len 512 --gen-len 128 --repeats 5 \
    --output "$OUT/grammar_overhead_8b_triton.json" 2>&1 | strip | tail -12
  ;;
esac
python3 bench/gpu/summarize_engine.py "$OUT"/engine_*.json 2>/dev/null
