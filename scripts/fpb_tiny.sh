#!/usr/bin/env bash
# results/fpb-tiny: the demo's tiny-model pipeline on the official FPB files.
# Skips (exit 0) when ../shared/data/semievol/fpb is absent; the data is never copied.
# Usage: scripts/fpb_tiny.sh [dotted overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/semievol/fpb
if [ ! -f "$data/labeled.csv" ]; then
  echo "fpb-tiny: $data/labeled.csv not found; skipping (the official release is not here)"
  exit 0
fi
out=results/fpb-tiny
mkdir -p "$out"
/usr/bin/time -v -o "$out/time-v.txt" .venv/bin/semievol run --config fpb-tiny \
  --run-dir "$out" "$@"
