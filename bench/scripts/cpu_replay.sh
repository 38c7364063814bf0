#!/usr/bin/env bash
# Trace replay on this CPU with the default model (SmolLM2-135M), lengths scaled down: a 2-minute slice of each shared
# trace, plait vs baseline for Mooncake and the agent traces. JSON and reports under bench/results/cpu_<date>/replay.
#   bash bench/scripts/cpu_replay.sh [mooncake|azure|agents|pressure|all]
set -uo pipefail
OUT=${OUT:-bench/results/cpu_$(date +%F)/replay}
mkdir -p "$OUT"
TRACES=${DATA:-../shared/data}/traces
PY=${PY:-.venv/bin/python}
run() { local name=$1; shift; "$PY" -m plait bench replay --output "$OUT/$name.json" --time-limit 900 "$@" 2>&1 | grep -v "^\s*$" | tail -16; }
what=${1:-all}
if [ "$what" = mooncake ] || [ "$what" = all ]; then
  # 1/32 of the lengths (16-token blocks); a KV pool holding the whole slice, so the measured prefix hit rate can be
  # compared with the trace's own block reuse.
  run mooncake --trace "$TRACES/mooncake/conversation_trace.jsonl" --format mooncake --length-scale 0.03125 \
    --unbounded-cache --compare baseline --slo-ttft 5 --slo-tpot 0.5
fi
if [ "$what" = azure ] || [ "$what" = all ]; then
  run azure-code --trace "$TRACES/azure2023/AzureLLMInferenceTrace_code.csv" --format azure --length-scale 0.0625 \
    --slo-ttft 5 --slo-tpot 0.5
  run azure-conv --trace "$TRACES/azure2023/AzureLLMInferenceTrace_conv.csv" --format azure --length-scale 0.0625 \
    --slo-ttft 5 --slo-tpot 0.5
fi
if [ "$what" = agents ] || [ "$what" = all ]; then
  run miniswe --trace "$TRACES/lmcache_agent/miniswe" --format lmcache-agent --length-scale 0.05 --compare baseline
  run taubench --trace "$TRACES/lmcache_agent/taubench" --format lmcache-agent --max-output-tokens 16 --compare baseline
fi
if [ "$what" = pressure ]; then
  # All 24 tau-bench sessions, arrivals 3x faster, on a 2k-slot pool: the active sessions' contexts do not fit.
  run taubench-pressure --trace "$TRACES/lmcache_agent/taubench" --format lmcache-agent --duration 0 --time-scale 3 \
    --max-output-tokens 16 --kv-slots 2048 --max-context 2048 --compare baseline
fi
