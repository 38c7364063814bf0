#!/usr/bin/env bash
# Agent-trace replays THROUGH `plait serve` on a GPU (Llama-3.1-8B shape, dummy weights, the real Llama-3 vocabulary):
# `plait bench replay --served` starts one fresh server per mode (the default plan, then `--plan baseline`) and replays
# the sessions against it over HTTP, as an agent framework would. JSON under $OUT.
#   bash bench/scripts/gpu_served_replay.sh miniswe|taubench [explicit|implicit|explicit,implicit] [extra flags]
# explicit: each session sends its program_id; implicit: none (the server recognises each session's calls).
# The pressure settings are those of gpu_replay.sh (miniswe-pressure, taubench-pressure).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
DATA=.gpu_data/shared_data  # the device has no ../shared: the traces travel in .gpu_data (git-ignored)
[ -d "$DATA" ] || DATA=../shared/data
TRACES=$DATA/traces
MODEL=(--model llama-3.1-8b --weights dummy --tokenizer .gpu_data/ggml-vocab-llama-bpe.gguf --no-report --served)
programs=${2:-explicit}
case "${1:-miniswe}" in
  miniswe)
    trace=(--trace "$TRACES/lmcache_agent/miniswe" --duration 0 --time-scale 9 --max-context 20480 --kv-slots 32768) ;;
  taubench)
    trace=(--trace "$TRACES/lmcache_agent/taubench" --duration 0 --time-scale 3 --max-context 2048 --kv-slots 2048) ;;
  *) echo "usage: $0 miniswe|taubench [explicit|implicit|explicit,implicit] [flags]" >&2; exit 2 ;;
esac
python3 -m plait bench replay "${MODEL[@]}" "${trace[@]}" --format lmcache-agent --time-limit 250 --compare baseline \
  --target-programs "$programs" --output "$OUT/${1}-served-${programs/,/-}${TAG:-}.json" "${@:3}" 2>&1 \
  | grep -v "^\s*$" | tail -20
