# Diagnostics for crashes on the lent GPU: full logs under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
E="--weights dummy --attention-backend triton --no-hf --no-roofline --repeats 1 --prompt-len 512 --gen-len 16"
try() { name=$1; shift; CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 -m plait bench engine $E "$@" --output /tmp/q.json > $OUT/$name.log 2>&1; echo "$name rc=$? $(grep -c 'illegal' $OUT/$name.log) illegal"; }
try 1b_b64 --model llama-3.2-1b --batch-sizes 64 --kv-slots 300000
try 1b_b64_overlap_off --model llama-3.2-1b --batch-sizes 64 --kv-slots 300000 --overlap off
try 1b_b64_graphs_off --model llama-3.2-1b --batch-sizes 64 --kv-slots 300000 --cuda-graphs off
try 1b_b64_slots40k --model llama-3.2-1b --batch-sizes 64 --kv-slots 40000
try 1b_b16 --model llama-3.2-1b --batch-sizes 16 --kv-slots 300000
try 1b_b2_bigtokens --model llama-3.2-1b --batch-sizes 2 --kv-slots 300000 --max-batch-tokens 16384
