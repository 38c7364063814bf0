#!/usr/bin/env bash
# Shared-prefix decode attention on the lent GPU, results under $OUT:
#   check: its kernel and engine tests at full shapes, and the kernel against plain decode attention (timed)
#   text2sql|react FLAGS...: the suite with plait, baseline, and baseline with shared-prefix decode only
# Run from the repository root with the wheels from ../shared/tools/gpu-wheels in .whl/ and the Llama-3 vocabulary
# and shared data in .gpu_data/.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
case "${1:-check}" in
check)
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/engine/test_shared_prefix_attention.py \
    tests/engine/test_triton_attention.py 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
  timeout 120 python3 bench/gpu/shared_prefix_decode.py --json "$OUT/shared_prefix_decode.json" 2>&1 | tail -9 \
    | tee "$OUT/shared_prefix_decode.txt"
  ;;
*)
  bash bench/scripts/gpu_workflows.sh one "$1" "${@:2}" --only shared_prefix_decode
  ;;
esac
