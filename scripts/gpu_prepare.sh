#!/usr/bin/env bash
# Prepare what scripts/gpu_bench.sh needs on a lent GPU machine that reaches no registry:
#   .whl/       wheels (Python 3.12, x86-64) of the runtime packages its image lacks, at
#               the versions uv.lock pins (its own jax, flax, optax, orbax-checkpoint
#               and transformers are used)
#   .gpu-data/  the official fpb and mmlu splits, copied from ../shared (never committed)
# Both folders are ignored by git; the device call carries them (64 MiB at most).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
py=.venv/bin/python
[ -x "$py" ] || py=python3
pin() { grep -A1 "^name = \"$1\"" uv.lock | sed -n 's/^version = "\(.*\)"/\1/p' | head -1; }
mkdir -p .whl
for pkg in gguf scann omegaconf tensorboardx; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "$pkg==$(pin "$pkg")"
done
mkdir -p .gpu-data
for task in fpb mmlu; do
  if [ -d "../shared/data/semievol/$task" ]; then
    mkdir -p ".gpu-data/$task"
    cp "../shared/data/semievol/$task/"*.csv ".gpu-data/$task/"
  else
    echo "../shared/data/semievol/$task not found: the pipeline rows will be skipped" >&2
  fi
done
du -sh .whl .gpu-data
