#!/usr/bin/env bash
# CI's packaging checks (docs/packaging.md): static checks always; the Nix parse + stub
# evaluation (installs Debian's nix-bin when missing); the Docker image build against a
# local stand-in base only when its inputs changed since the recorded passing build.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_packaging.py
if ! command -v nix-instantiate >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq nix-bin >/dev/null) || echo "nix-bin unavailable"
fi
if command -v nix-instantiate >/dev/null; then scripts/check_nix.sh; fi
scripts/check_docker.sh --if-changed
