#!/usr/bin/env bash
# Create .venv from uv.lock (hash-checked) and install this package into it.
# Usage: scripts/setup_env.sh [runtime|test]   (default: runtime)
#   runtime: the pinned runtime dependencies only.
#   test:    + the test and bench extras. torch comes from `pip install torch==2.13.0`
#            (a CPU build where the machine provides one); it is pruned from the
#            hash-checked export so uv/pip never pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-runtime}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x .venv/bin/python ]; then "$python" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip uv==0.13.9
uv=.venv/bin/uv

# The lock must match pyproject.toml; fail loudly when it does not.
"$uv" lock --locked

req=$(mktemp)
trap 'rm -f "$req"' EXIT
case "$mode" in
  runtime) "$uv" export --frozen --no-emit-project -q -o "$req" ;;
  test)    .venv/bin/python -m pip install -q torch==2.13.0
           "$uv" export --frozen --no-emit-project --extra test --extra bench \
             --prune torch -q -o "$req" ;;
  *) echo "usage: $0 [runtime|test]" >&2; exit 2 ;;
esac
.venv/bin/python -m pip install -q --require-hashes --no-deps -r "$req"
# The package is built with the lock's (hash-checked) setuptools, without build
# isolation, which would fetch an unpinned one; venv's own setuptools is too old.
"$uv" export --frozen --no-emit-project --extra test -q \
  | awk '/^setuptools==/{p=1; print; next} p && /^ /{print; next} {p=0}' > "$req"
.venv/bin/python -m pip install -q --require-hashes --no-deps -r "$req"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "environment ready: $(.venv/bin/python --version), $(.venv/bin/semievol --version 2>/dev/null || echo semievol)"
