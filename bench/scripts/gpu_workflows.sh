#!/usr/bin/env bash
# Workflow suites on a GPU with the Llama-3.1-8B shape (dummy weights, forced output lengths, real Llama-3
# vocabulary): plait vs baseline in one run each, then an ablation. Results and Chrome traces under $OUT.
#   bash bench/scripts/gpu_workflows.sh compare|loaded|ablation [extra bench flags for loaded] | one SUITE FLAGS...
#   bash bench/scripts/gpu_workflows.sh sweep SUITE RATES [SEEDS] [FLAGS...]: issue 41's sweep of one suite (plait and
#     baseline at every rate and seed; the bfcl suite needs bfcl-eval's wheel in .whl/, ~2 MB)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
MODEL=(--model llama-3.1-8b --weights dummy --tokenizer .gpu_data/ggml-vocab-llama-bpe.gguf --time-limit 150)
# The device has no ../shared: the traces and Spider schemas travel in .gpu_data/shared_data (git-ignored).
[ -d .gpu_data/shared_data ] && MODEL+=(--data-dir .gpu_data/shared_data)
run() { local name=$1; shift; python3 -m plait bench workflow --suite "$name" "${MODEL[@]}" --output "$OUT/$name.json" "$@" 2>&1 | grep -v "^\s*$" | tail -40; }
case "${1:-compare}" in
  compare)
    run multi-agent --programs 32 --rate 0 --trace "$OUT/multi-agent.trace.json"
    run react --programs 48
    run text2sql --programs 48
    run starvation --programs 200 --rate 10
    ;;
  loaded)
    # Open-loop arrivals above what the pool can hold at once: the regime where program-level order decides.
    run multi-agent --programs 64 --rate 4 --repeats 2 --trace "$OUT/multi-agent.trace.json" "${@:2}"
    run react --programs 96 --rate 8 "${@:2}"
    run text2sql --programs 128 --rate 16 "${@:2}"
    ;;
  ablation)
    run "${2:-multi-agent}" --programs 32 --rate 0 --ablation
    ;;
  sweep)
    # bash bench/scripts/gpu_workflows.sh sweep bfcl 0.5,1,2,4 0,1,2 --programs 48 --time-limit 90
    run "$2" --sweep "rate=$3" --seeds "${4:-0,1,2}" "${@:5}"
    ;;
  one)
    # one suite with the given flags: bash bench/scripts/gpu_workflows.sh one react --programs 96 --rate 12
    run "$2" "${@:3}"
    ;;
esac
