#!/usr/bin/env bash
# The one prepared script for a lent GPU (an H200 or H100: Python 3.12 with its own jax, flax,
# optax, orbax-checkpoint and transformers). At most 8 minutes; everything it measures
# lands in one folder ($OUT on the device machine, else results/bench/gpu):
#   env.json       the device, versions, XLA flags
#   selftest.json  `semievol selftest` on one host core (another CPU kind for results/repro)
#   train.json     LoRA SFT on the Llama-3.1-8B shape, random bf16 weights: MFU (goal >= 50%)
#   generate.json  8B decoding as a fraction of the HBM bandwidth bound (goal >= 70%)
#   compile.json   compile seconds of the train / decode / embed programs (SmolLM2, 8B)
#   real_run.json  the whole pipeline on the full official fpb and mmlu splits with
#                  SmolLM2's shape in random weights (the 98 MB file cannot travel)
# Prepare on the development machine (wheels of what the GPU image lacks, and the official
# data, under ignored folders that the device call carries):
#   scripts/gpu_prepare.sh          then carry .whl and .gpu-data
# --smoke runs the same steps at toy shapes on this machine's CPU in under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; fi
out="${OUT:-results/bench/gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ "$smoke" = 1 ]; then py=.venv/bin/python; fi
if [ -d .whl ] && [ "$smoke" = 0 ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
data="${DATA:-.gpu-data}"
[ -d "$data" ] || data=../shared/data/semievol
start=$(date +%s)
failed=()
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
# One lease is short: a failing step is recorded and the next one still runs.
try() { "$@" || { echo "!! failed ($?): $*"; failed+=("$*"); }; }

step env
"$py" -m semievol_jax env --json > "$out/env.json"

step selftest
if "$py" -m semievol_jax selftest --help > /dev/null 2>&1; then
  taskset -c 0 "$py" -m semievol_jax selftest --json > "$out/selftest.json" || true
else
  echo '{"selftest": "not in this build"}' > "$out/selftest.json"
fi

if [ "$smoke" = 1 ]; then
  step "train (smoke)"
  try "$py" scripts/bench_train.py --preset tiny --mode lora --no-torch --steps 1 --warmup 0 \
    --out "$out/train.json"
  step "generate (smoke)"
  try "$py" scripts/bench_generate.py --accelerator-8b --smoke --out "$out/generate.json"
  step "compile (smoke)"
  try "$py" scripts/bench_compile.py --shapes tiny --programs embed --out "$out/compile.json"
  step "pipeline (smoke)"
  try "$py" scripts/real_run.py --tiny --task fpb --rows 4 --data "$data" --out "$out/real_run.json" \
    sft.train.epochs=1 propose.n=2 propose.sample.max_new_tokens=4 \
    select.reflect_sample.max_new_tokens=4 eval.sample.max_new_tokens=4 final.train.epochs=1
else
  step train
  try "$py" scripts/bench_train.py --preset llama8b --mode lora --no-torch --dtype bfloat16 \
    --steps 5 --warmup 2 --out "$out/train.json"
  step generate
  # HBM bandwidth bound of the card in hand (H200 4.8 TB/s, H100 SXM 3.35 TB/s).
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  case "$gpu" in *H100*) hbm=3350 ;; *) hbm=4800 ;; esac
  echo "$gpu: HBM bound $hbm GB/s"
  try "$py" scripts/bench_generate.py --accelerator-8b --hbm-gbps "$hbm" --out "$out/generate.json"
  step compile
  try "$py" scripts/bench_compile.py --dtype bfloat16 --out "$out/compile.json"
  for task in fpb mmlu; do
    step "pipeline $task"
    try "$py" scripts/real_run.py --random-weights --task "$task" --rows 0 --data "$data" \
      --key "$task-full/gpu" --out "$out/real_run.json" base.dtype=bfloat16 \
      sft.train.compute_dtype=bfloat16 final.train.compute_dtype=bfloat16 \
      propose.sample.batch_size=256 select.reflect_sample.batch_size=256 \
      eval.sample.batch_size=256
  done
fi
step "done: $out"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'failed step: %s\n' "${failed[@]}" >&2
  exit 1
fi
