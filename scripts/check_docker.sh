#!/usr/bin/env bash
# Verify the Dockerfile without Docker Hub or a Docker engine: build the CPU image with
# podman against a locally made stand-in for python:3.11-slim-bookworm, then run
# `semievol --help`, `semievol env` and the torch-free tests inside it.
#
# Usage: scripts/check_docker.sh [--if-changed|--status]
#   --if-changed  exit 0 at once when results/packaging/docker-check.json records a
#                 passing build of the current Dockerfile, .dockerignore, pyproject.toml,
#                 uv.lock and this script (their sha256s), else build; CI calls it so.
#   --status      only say whether that record is current (exit 0) or stale (exit 1).
# Env: SEMIEVOL_DOCKER_CACHE (stand-in rootfs cache, default /var/tmp/semievol-docker),
#      DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      SEMIEVOL_DOCKER_TESTS (test files run in the image; default: the torch-free ones
#      that exist), SEMIEVOL_DOCKER_DEMO=1|quick (also run the default CMD, the demo,
#      or `demo --quick`, with /results bind-mounted from results/packaging/work/).
# Needs root (debootstrap, rootful podman). Writes results/packaging/docker-check.json;
# full logs go to results/packaging/work/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

record=results/packaging/docker-check.json
work=results/packaging/work
inputs=(Dockerfile .dockerignore pyproject.toml uv.lock scripts/check_docker.sh)
cache="${SEMIEVOL_DOCKER_CACHE:-/var/tmp/semievol-docker}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
standin=localhost/semievol-standin/python:3.11-slim-bookworm
image=localhost/semievol-jax:cpu
test_image=localhost/semievol-jax:cpu-test

inputs_json() {
  python3 - "${inputs[@]}" <<'EOF'
import hashlib, json, sys
print(json.dumps({p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in sys.argv[1:]}))
EOF
}

# True when the record is a pass for exactly the current inputs.
up_to_date() {
  [ -f "$record" ] && python3 - "$record" "$(inputs_json)" <<'EOF'
import json, sys
rec = json.load(open(sys.argv[1]))
sys.exit(0 if rec.get("outcome") == "pass" and rec.get("inputs") == json.loads(sys.argv[2]) else 1)
EOF
}

case "${1:-}" in
  "") ;;
  --status)
    if up_to_date; then echo "docker check: up to date ($record)"; exit 0; fi
    echo "docker check: stale (inputs changed since $record, or no passing record)"
    exit 1 ;;
  --if-changed)
    if up_to_date; then
      echo "docker check: inputs unchanged since the verified build in $record; skipping"
      exit 0
    fi
    echo "docker check: inputs changed (or no passing record); building" ;;
  *) echo "usage: $0 [--if-changed|--status]" >&2; exit 2 ;;
esac

mkdir -p "$work" "$cache"
# Hashed before building, so an input edited during the build cannot be recorded as verified.
inputs_at_start=$(inputs_json)
steps_file="$work/steps.tsv"
: > "$steps_file"

# Each step's full output goes to $work/<name>.log; the record keeps its tail.
step() {
  local name="$1"; shift
  local t0 rc=0
  t0=$(date +%s%N)
  echo "== $name: $*"
  "$@" > "$work/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$steps_file"
  tail -n 5 "$work/$name.log"
  return "$rc"
}

write_record() {
  local outcome="$1"
  python3 - "$record" "$outcome" "$inputs_at_start" "$steps_file" "$work" <<'EOF'
import datetime, json, os, platform, re, subprocess, sys
path, outcome, inputs, steps_file, work = sys.argv[1:6]

def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None

steps = []
for line in open(steps_file):
    name, rc, secs = line.rstrip("\n").split("\t")
    log = os.path.join(work, name + ".log")
    tail = open(log, errors="replace").read().splitlines()[-15:] if os.path.exists(log) else []
    steps.append({"name": name, "rc": int(rc), "seconds": round(int(secs) / 1000, 1), "log_tail": tail})
dockerfile = open("Dockerfile").read()
base_default = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile, re.M).group(1)
rec = {
    "what": "scripts/check_docker.sh: podman build of the CPU image against a local stand-in base",
    "command": "scripts/check_docker.sh",
    "outcome": outcome,
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "inputs": json.loads(inputs),
    "git_commit": sh("git", "rev-parse", "HEAD"),
    "base_image_default": base_default,
    "base_image_used": {
        "name": "localhost/semievol-standin/python:3.11-slim-bookworm",
        "id": sh("podman", "image", "inspect", "--format", "{{.Id}}",
                 "localhost/semievol-standin/python:3.11-slim-bookworm"),
        "made_by": "debootstrap --variant=minbase bookworm, then apt-get install python3.11 "
                   "python3.11-venv ca-certificates; /usr/local/bin/python3 -> /usr/bin/python3.11",
    },
    "image": {
        "name": "localhost/semievol-jax:cpu",
        "id": sh("podman", "image", "inspect", "--format", "{{.Id}}", "localhost/semievol-jax:cpu"),
        "size_bytes": sh("podman", "image", "inspect", "--format", "{{.Size}}",
                         "localhost/semievol-jax:cpu"),
    },
    "host": {
        "platform": platform.platform(),
        "podman": sh("podman", "--version"),
        "buildah": sh("buildah", "--version"),
        "hadolint": sh(".venv/bin/hadolint", "--version"),
    },
    "steps": steps,
}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(rec, f, indent=2)
    f.write("\n")
print(f"wrote {path}: {outcome}")
EOF
}

fail() {
  echo "docker check FAILED at step: $1 (full log: $work/$1.log)" >&2
  write_record fail
  exit 1
}

ensure_tools() {
  local missing=()
  for t in podman buildah debootstrap runc; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

# crun fails on this host's hybrid cgroups; runc works given explicit ulimits. A
# private containers.conf keeps the host's podman configuration untouched.
containers_conf() {
  cat > "$cache/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
}

# A stand-in for python:3.11-slim-bookworm: same Debian release, Python 3.11 reachable
# as /usr/local/bin/python3 (where the official image has it), CA bundle, C.UTF-8.
make_standin() {
  if podman image exists "$standin"; then
    echo "stand-in base cached: $standin"
    return 0
  fi
  # Runs under `step` (an || context, where set -e is off): every command checks.
  local rootfs="$cache/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" || return 1
  # apt inside the chroot resolves dependencies (debootstrap --include does not).
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf" || return 1
  chroot "$rootfs" apt-get update -q || return 1
  DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y -q --no-install-recommends \
    python3.11 python3.11-venv ca-certificates || return 1
  chroot "$rootfs" apt-get clean
  : > "$rootfs/etc/resolv.conf"
  for n in python3 python python3.11; do
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$n" || return 1
  done
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$standin" || return 1
  rm -rf "$rootfs"
}

# Wheels here come from the host's local package index (its pip config), not from
# pypi.org; the build sees that index read-only through build-time volumes, so the
# Dockerfile stays the one users build against PyPI.
index_volumes() {
  local conf="$cache/pip.conf"
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    for f in /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
      [ -f "$f" ] && grep -E '^\s*(find-links|extra-index-url|index-url)\s*=' "$f" || true
    done
  } > "$conf"
  vols=(-v "$conf:/etc/pip.conf:ro")
  for d in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$d" ] && vols+=(-v "$d:$d:ro")
  done
}

build() {
  local target="$1" tag="$2"
  local certs=""
  for c in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$c" ] && certs+="$(cat "$c")"$'\n'
  done
  # docker format: OCI image config has no SHELL, and the builder stage relies on it.
  podman build --isolation=chroot --format docker "${vols[@]}" \
    --build-arg BASE_IMAGE="$standin" \
    --build-arg EXTRA_CA_CERTS="$certs" \
    --target "$target" -t "$tag" .
}

run_in() {
  podman run --rm --network=none "$@"
}

# The image holds exactly the lock's versions: pip freeze in the image against
# `uv export` (a name may have several locked versions, one per Python range).
check_versions() {
  local frozen
  frozen=$(run_in --entrypoint python "$image" -m pip freeze --all) || return 1
  .venv/bin/uv export --frozen --no-emit-project --no-header --no-hashes -q \
    > "$work/lock-export.txt" || return 1
  python3 - "$work/lock-export.txt" "$frozen" <<'EOF'
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9_.-]+)==([^ ;]+)", line)
    if m:
        locked.setdefault(norm(m.group(1)), set()).add(m.group(2))
frozen = {}
for line in sys.argv[2].splitlines():
    name, _, version = line.partition("==") if "==" in line else line.partition(" @ ")
    frozen[norm(name.strip())] = version.strip()
extra = {"pip", "setuptools", "semievol-jax"}  # venv's own tools; the package itself
bad = [f"{n}: image {v}, lock {sorted(locked.get(n, []))}" for n, v in frozen.items()
       if n not in extra and v not in locked.get(n, set())]
missing = sorted(set(locked) - set(frozen))
print(f"{len(frozen)} installed, {len(locked)} locked; mismatched {bad}; missing {missing}")
sys.exit(1 if bad or missing else 0)
EOF
}

default_tests() {
  local t out=()
  for t in tests/test_cli.py tests/test_config.py tests/test_tasks.py tests/test_data.py \
           tests/test_selection.py tests/test_report.py tests/test_rng.py; do
    [ -f "$t" ] && out+=("$t")
  done
  echo "${out[@]}"
}

ensure_tools
containers_conf
export CONTAINERS_CONF="$cache/containers.conf"

step hadolint .venv/bin/hadolint Dockerfile || fail hadolint
step standin make_standin || fail standin
index_volumes
step build_image build image "$image" || fail build_image
step build_test_image build test "$test_image" || fail build_test_image
step run_help run_in "$image" --help || fail run_help
step run_env run_in "$image" env || fail run_env
step versions check_versions || fail versions
step run_whoami run_in --entrypoint id "$image" -u || fail run_whoami
[ "$(tail -n 1 "$work/run_whoami.log")" != "0" ] || { echo "image runs as root" >> "$work/run_whoami.log"; fail run_whoami; }
read -r -a tests <<< "${SEMIEVOL_DOCKER_TESTS:-$(default_tests)}"
step run_tests run_in "$test_image" -q "${tests[@]}" || fail run_tests
# The default CMD (the full demo) or its --quick smoke run, results on a bind mount.
case "${SEMIEVOL_DOCKER_DEMO:-0}" in
  0) ;;
  1|quick)
    demo_args=()
    [ "$SEMIEVOL_DOCKER_DEMO" = quick ] && demo_args=(demo --out /results/demo --quick)
    rm -rf "$work/demo-results" && mkdir -p "$work/demo-results" && chmod 777 "$work/demo-results"
    step run_demo run_in -v "$PWD/$work/demo-results:/results" "$image" "${demo_args[@]}" \
      || fail run_demo ;;
  *) echo "SEMIEVOL_DOCKER_DEMO must be 0, 1 or quick" >&2; exit 2 ;;
esac
write_record pass
