#!/usr/bin/env bash
# Workflow suites on this CPU with the default model: plait vs baseline, one run each (see README "Workflow suites").
# Sizes are reduced from the suites' CPU defaults so that each mode takes about a minute on a 2-core machine.
set -euo pipefail
OUT=${OUT:-bench/results/cpu_$(date +%F)/workflows}
mkdir -p "$OUT"
PLAIT=${PLAIT:-.venv/bin/plait}
run() { local name=$1; shift; "$PLAIT" bench workflow --suite "$name" --output "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.txt"; }
case "${1:-all}" in
  all)
    run multi-agent --programs 8 --rate 0 --trace "$OUT/multi-agent.trace.json"
    run react --programs 10
    run text2sql --programs 10
    run map-reduce --programs 6
    run starvation --programs 20
    ;;
  ablation)
    run "${2:-multi-agent}" --programs 8 --rate 0 --ablation --output "$OUT/ablation_${2:-multi-agent}.json"
    ;;
  *) run "$@" ;;
esac
