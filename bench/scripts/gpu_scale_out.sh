#!/usr/bin/env bash
# Issue 42 on one lent GPU (Ray cannot travel to it: replicas run in the server's process, --replica-backend local),
# results under $OUT:
#   routing: the agent-trace replays under pressure through `plait serve --replicas 2` (Llama-3.1-8B shape, dummy
#            weights, two replicas on the one GPU): program routing vs prefix-only vs round-robin, and the baseline
#   migration: pause of a live migration against recomputing the prompt (8B shape, 2k to 32k tokens)
#   bash bench/scripts/gpu_scale_out.sh routing miniswe|taubench | migration
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
DATA=.gpu_data/shared_data
[ -d "$DATA" ] || DATA=../shared/data
MODEL=(--model llama-3.1-8b --weights dummy --tokenizer .gpu_data/ggml-vocab-llama-bpe.gguf)
case "${1:-routing}" in
  routing)
    case "${2:-miniswe}" in
      miniswe) trace=(--trace "$DATA/traces/lmcache_agent/miniswe" --duration 0 --time-scale 9 --max-context 20480
                      --kv-slots 32768) ;;
      taubench) trace=(--trace "$DATA/traces/lmcache_agent/taubench" --duration 0 --time-scale 3 --max-context 2048
                       --kv-slots 2048) ;;
    esac
    python3 -m plait bench replay "${MODEL[@]}" "${trace[@]}" --format lmcache-agent --no-report --served \
      --replicas 2 --replica-backend local --routing program,prefix,round-robin \
      --time-limit 250 --output "$OUT/routing-${2:-miniswe}.json" "${@:3}" 2>&1 | grep -v "^\s*$" | tail -16 ;;
  migration)
    python3 -m plait bench migration "${MODEL[@]}" --prompt-lens 2048,8192,32768 --max-context 40000 \
      --kv-slots 131072 --output "$OUT/migration-8b.json" "${@:2}" 2>&1 | grep -v "━" | tail -8 ;;
esac
