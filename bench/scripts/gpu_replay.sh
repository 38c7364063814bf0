#!/usr/bin/env bash
# Trace replay on a GPU with the Llama-3.1-8B shape (dummy weights, the real Llama-3 vocabulary, forced output lengths):
# a 2-minute slice of each shared trace. JSON under $OUT; reports are rendered afterwards with
#   plait bench replay-report FILE.json
#   bash bench/scripts/gpu_replay.sh requests|agents|agents-loaded|miniswe-pressure|taubench-pressure [extra flags]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# The device has no ../shared: the traces travel in .gpu_data/shared_data (git-ignored).
DATA=.gpu_data/shared_data
[ -d "$DATA" ] || DATA=../shared/data
TRACES=$DATA/traces
MODEL=(--model llama-3.1-8b --weights dummy --tokenizer .gpu_data/ggml-vocab-llama-bpe.gguf --no-report --time-limit 200)
run() { local name=$1; shift; python3 -m plait bench replay "${MODEL[@]}" --output "$OUT/$name.json" "$@" 2>&1 | grep -v "^\s*$" | tail -16; }
case "${1:-requests}" in
  requests)
    # Mooncake at a quarter of its lengths (2-minute slice: 339 requests, 1.2M prompt tokens; full length would be
    # 4.9M prompt tokens, more than an 8B model prefills on one GPU in 2 minutes).
    run mooncake --trace "$TRACES/mooncake/conversation_trace.jsonl" --format mooncake --length-scale 0.25 \
      --slo-ttft 2 --slo-tpot 0.1
    run azure-conv --trace "$TRACES/azure2023/AzureLLMInferenceTrace_conv.csv" --format azure --slo-ttft 2 --slo-tpot 0.1
    ;;
  agents)
    run azure-code --trace "$TRACES/azure2023/AzureLLMInferenceTrace_code.csv" --format azure --slo-ttft 2 --slo-tpot 0.1
    run miniswe --trace "$TRACES/lmcache_agent/miniswe" --format lmcache-agent --compare baseline --max-context 65536
    ;;
  agents-loaded)
    run taubench --trace "$TRACES/lmcache_agent/taubench" --format lmcache-agent --compare baseline
    # All 20 mini-swe-agent sessions, arrivals compressed into 2 minutes (tool gaps as recorded), on a KV pool that
    # holds about half of the active sessions' contexts: where keeping the right KV matters.
    run miniswe-loaded --trace "$TRACES/lmcache_agent/miniswe" --format lmcache-agent --compare baseline \
      --duration 0 --time-scale 4.5 --max-context 65536 --kv-slots 65536
    ;;
  miniswe-pressure)
    # All 20 mini-swe-agent sessions, arrivals 9x faster, prompts cut to fit a 20k context window (2 sessions are
    # longer), on a 32k-slot pool: the active sessions' contexts do not fit, so what stays resident decides what is
    # recomputed.
    run "miniswe-pressure${TAG:-}" --trace "$TRACES/lmcache_agent/miniswe" --format lmcache-agent --compare baseline \
      --duration 0 --time-scale 9 --max-context 20480 --kv-slots 32768 --time-limit 250 "${@:2}"
    ;;
  taubench-pressure)
    # All 24 tau-bench sessions, arrivals 3x faster, on a 2k-slot pool (the active sessions hold about 6k tokens).
    run "taubench-pressure${TAG:-}" --trace "$TRACES/lmcache_agent/taubench" --format lmcache-agent --compare baseline \
      --duration 0 --time-scale 3 --max-context 2048 --kv-slots 2048 --time-limit 250 "${@:2}"
    ;;
esac
