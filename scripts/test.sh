#!/usr/bin/env bash
# The README's test command: set up .venv from the lock (with the test extras), check
# that the lock matches pyproject.toml, lint, and run the default (not slow) suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` or `scripts/test.sh -m ""`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
.venv/bin/uv lock --locked          # fails when uv.lock no longer matches pyproject.toml
.venv/bin/ruff check semievol_jax tests scripts
if [ $# -eq 0 ]; then set -- -m "not slow and not real_model"; fi
exec .venv/bin/python -m pytest "$@"
