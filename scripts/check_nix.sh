#!/usr/bin/env bash
# Verify flake.nix offline: parse it, then evaluate and run `nix flake check` with every
# input replaced by a local stub flake (nothing from GitHub or cache.nixos.org can be
# fetched here). The stubs implement just the API surface flake.nix uses, so this proves
# the wiring, not the real build:
#   - uv2nix's loadWorkspace really reads pyproject.toml and uv.lock (builtins.fromTOML)
#     and the package set is the lock's packages at the lock's versions;
#   - packages.default / apps.default: `nix run` runs `semievol demo --out results/demo`
#     (the stub venv's semievol records its argv instead of running the demo);
#   - checks.pytest copies the source minus semievol_jax/ and calls pytest on tests/
#     with -m "not slow" (the stub pytest records its argv, checks the source package
#     is absent and runs the real pytest from .venv with --collect-only, so the copied
#     tests must import and collect);
#   - devShells.default builds.
# Usage: scripts/check_nix.sh      Writes results/packaging/nix-check.json.
# Needs nix >= 2.8 (Debian: apt-get install nix-bin); run as root (single-user store).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
record=results/packaging/nix-check.json
work=results/packaging/work/nix
mkdir -p "$work"
: > "$work/steps.tsv"

command -v nix >/dev/null || { echo "nix not found (apt-get install nix-bin)" >&2; exit 1; }
host_python="$repo/.venv/bin/python"
[ -x "$host_python" ] || { echo "$host_python missing (scripts/setup_env.sh test)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/semievol-nix-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# No sandbox (Debian's nix cannot use it here), no substituters (no network), and
# builds as the invoking user, so the stub pytest can run .venv's interpreter.
nixopts=(--extra-experimental-features "nix-command flakes" --option sandbox false
         --option substituters "" --option build-users-group "")

step() {
  local name="$1"; shift
  local t0 rc=0
  t0=$(date +%s%N)
  echo "== $name"
  "$@" > "$work/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$work/steps.tsv"
  tail -n 5 "$work/$name.log"
  return "$rc"
}

write_record() {
  python3 - "$record" "$1" "$work" <<'EOF'
import datetime, hashlib, json, os, subprocess, sys
path, outcome, work = sys.argv[1:4]
steps = []
for line in open(os.path.join(work, "steps.tsv")):
    name, rc, ms = line.rstrip("\n").split("\t")
    log = os.path.join(work, name + ".log")
    tail = open(log, errors="replace").read().splitlines()[-15:] if os.path.exists(log) else []
    steps.append({"name": name, "rc": int(rc), "seconds": round(int(ms) / 1000, 1), "log_tail": tail})
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
rec = {
    "what": "scripts/check_nix.sh: parse + stub-input evaluation and `nix flake check` of flake.nix",
    "command": "scripts/check_nix.sh",
    "outcome": outcome,
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "inputs": {p: sha(p) for p in ("flake.nix", "nix/overrides.nix", "pyproject.toml", "uv.lock",
                                   "scripts/check_nix.sh")},
    "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
    "nix": subprocess.run(["nix", "--version"], capture_output=True, text=True).stdout.strip(),
    "not_verified": "the real build: nixpkgs, pyproject.nix, uv2nix and build-system-pkgs "
                    "cannot be fetched here, so no wheel was built or patched by Nix",
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
  echo "nix check FAILED at step: $1 (log: $work/$1.log)" >&2
  write_record fail
  exit 1
}

# --- stub flakes ----------------------------------------------------------------
mkdir -p "$tmp/stubs/nixpkgs" "$tmp/stubs/pyproject-nix" "$tmp/stubs/uv2nix" \
         "$tmp/stubs/pyproject-build-systems"

# nixpkgs: the few lib functions and builders flake.nix and nix/overrides.nix use.
# Builders make real (tiny) derivations with /bin/sh, so checks and apps can run.
cat > "$tmp/stubs/nixpkgs/flake.nix" <<'EOF'
{
  outputs = { self }:
    let
      composeExtensions = f: g: final: prev:
        let fApplied = f final prev; in fApplied // g final (prev // fApplied);
      lib = {
        genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
        composeExtensions = composeExtensions;
        composeManyExtensions = builtins.foldl' composeExtensions (final: prev: { });
        optionalAttrs = cond: attrs: if cond then attrs else { };
      };
      pkgsFor = system:
        let
          drv = name: script: derivation {
            inherit name system;
            builder = "/bin/sh";
            args = [ "-c" script ];
            PATH = "/usr/bin:/bin";
          };
          dummy = name: drv name "mkdir -p $out";
        in rec {
          inherit lib;
          stdenv = { isLinux = true; cc.cc.lib = dummy "libstdcxx-stub"; };
          zlib = dummy "zlib-stub";
          uv = dummy "uv-stub";
          python311 = (dummy "python3.11-stub") // { interpreter = "/usr/bin/python3"; };
          callPackage = f: args: f args;
          writeShellApplication = { name, text, ... }:
            derivation {
              inherit name system text;
              builder = "/bin/sh";
              PATH = "/usr/bin:/bin";
              args = [ "-c" ''
                mkdir -p $out/bin
                printf '#!/bin/sh\nset -eu\n%s\n' "$text" > $out/bin/${name}
                chmod +x $out/bin/${name}
              '' ];
            };
          runCommand = name: env: script:
            derivation ({
              inherit name system;
              builder = "/bin/sh";
              args = [ "-c" "set -eu; ${script}" ];
              PATH = builtins.concatStringsSep ":"
                (map (d: "${d}/bin") (env.nativeBuildInputs or [ ]) ++ [ "/usr/bin" "/bin" ]);
            } // removeAttrs env [ "nativeBuildInputs" ]);
          mkShell = { packages ? [ ], ... }:
            drv "nix-shell" "mkdir -p $out; echo ${toString packages} > $out/packages";
        };
    in {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "aarch64-darwin" ] pkgsFor;
    };
}
EOF

# pyproject-nix: build.packages -> a package scope with overrideScope and mkVirtualEnv.
# The stub venv's bin/semievol records argv; bin/pytest records argv and collects the
# given tests with the real pytest of .venv.
cat > "$tmp/stubs/pyproject-nix/flake.nix" <<EOF
{
  outputs = { self }: {
    build.packages = { python, ... }:
      let
        compose = f: g: final: prev:
          let fApplied = f final prev; in fApplied // g final (prev // fApplied);
        mkScope = overlays:
          let
            base = final: {
              inherit python;
              overrideScope = ext: mkScope (overlays ++ [ ext ]);
              mkVirtualEnv = name: spec:
                let
                  versions = builtins.mapAttrs (n: extras: {
                    version = final.\${n}.version;
                    inherit extras;
                    buildInputs = map (d: d.name) (final.\${n}.buildInputs or [ ]);
                  }) spec;
                in derivation {
                  inherit name;
                  system = python.system;
                  builder = "/bin/sh";
                  PATH = "/usr/bin:/bin";
                  specJson = builtins.toJSON versions;
                  hasPytest = if spec ? pytest then "1" else "";
                  args = [ "-c" ''
                    set -eu
                    mkdir -p \$out/bin
                    printf '%s\n' "\$specJson" > \$out/venv-spec.json
                    printf '#!/bin/sh\necho "stub-semievol argv: \$*"\n' > \$out/bin/semievol
                    chmod +x \$out/bin/semievol
                    if [ -n "\$hasPytest" ]; then
                      printf '#!/bin/sh\necho "stub-pytest argv: \$*"\nls pyproject.toml tests >/dev/null\n[ ! -e semievol_jax ] || { echo "source package present: tests would not use the installed one"; exit 1; }\nexec $host_python -m pytest --collect-only -q -p no:cacheprovider tests\n' > \$out/bin/pytest
                      chmod +x \$out/bin/pytest
                    fi
                  '' ];
                };
            };
            fixed = final: let prev = base final; in prev // (builtins.foldl' compose (f: p: { }) overlays) final prev;
            self' = fixed self';
          in self';
      in mkScope [ ];
  };
}
EOF

# uv2nix: loadWorkspace reads the real pyproject.toml and uv.lock.
cat > "$tmp/stubs/uv2nix/flake.nix" <<'EOF'
{
  outputs = { self }: {
    lib.workspace.loadWorkspace = { workspaceRoot }:
      let
        pyproject = builtins.fromTOML (builtins.readFile (workspaceRoot + "/pyproject.toml"));
        lock = builtins.fromTOML (builtins.readFile (workspaceRoot + "/uv.lock"));
        name = pyproject.project.name;
        extras = builtins.attrNames (pyproject.project.optional-dependencies or { });
        mkPkg = attrs: attrs // { overrideAttrs = f: mkPkg (attrs // f attrs); };
      in {
        deps = {
          default = { ${name} = [ ]; };
          optionals = { ${name} = extras; };
          all = { ${name} = extras; };
        };
        mkPyprojectOverlay = { sourcePreference }:
          assert sourcePreference == "wheel";
          final: prev: builtins.listToAttrs (map (p: {
            name = p.name;
            value = mkPkg { pname = p.name; version = p.version; };
          }) lock.package);
        mkEditablePyprojectOverlay = { root }: final: prev: { editableRoot = root; };
      };
  };
}
EOF

cat > "$tmp/stubs/pyproject-build-systems/flake.nix" <<'EOF'
{
  outputs = { self }: {
    overlays = { wheel = final: prev: { }; default = final: prev: { }; };
  };
}
EOF

# The flake under test: a copy (path: flake) of the files it reads, so that no
# flake.lock is written into the working tree and untracked files don't matter.
src="$tmp/src"
mkdir -p "$src"
cp -r flake.nix nix pyproject.toml uv.lock README.md docs scripts tests semievol_jax "$src/"  # tests import scripts/, read docs/
find "$src" -name __pycache__ -prune -exec rm -rf {} +

overrides=()
for i in nixpkgs pyproject-nix uv2nix pyproject-build-systems; do
  overrides+=(--override-input "$i" "path:$tmp/stubs/$i")
done
flake=(--no-write-lock-file "${overrides[@]}")

eval_json() {  # eval_json ATTR -> prints JSON of the flake attribute
  nix "${nixopts[@]}" eval --json "path:$src#$1" "${flake[@]}"
}

check_parse() {
  nix-instantiate --parse flake.nix > /dev/null && nix-instantiate --parse nix/overrides.nix > /dev/null
}

check_outputs() {
  nix "${nixopts[@]}" flake show "path:$src" "${flake[@]}" || return 1
  # The env is built from the lock: jax etc. carry uv.lock's versions.
  local spec
  spec=$(nix "${nixopts[@]}" build --no-link --json "path:$src#packages.x86_64-linux.default" "${flake[@]}" \
         | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["outputs"]["out"])') || return 1
  echo "packages.default spec: $(cat "$spec/venv-spec.json")"
  "$host_python" - "$spec/venv-spec.json" <<'EOF' || return 1
import json, sys, tomllib
spec = json.load(open(sys.argv[1]))
lock = {p["name"]: p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"]}
assert spec["semievol-jax"]["version"] == lock["semievol-jax"], spec
print("semievol-jax", spec["semievol-jax"]["version"], "== uv.lock")
EOF
  eval_json 'packages.x86_64-linux.default.name'
}

check_app() {
  local out
  out=$(nix "${nixopts[@]}" run "path:$src" "${flake[@]}") || return 1
  echo "$out"
  [ "$out" = "stub-semievol argv: demo --out results/demo" ] || { echo "apps.default does not run the demo"; return 1; }
  out=$(nix "${nixopts[@]}" run "path:$src#semievol" "${flake[@]}" -- env --json) || return 1
  echo "$out"
  [ "$out" = "stub-semievol argv: env --json" ] || { echo "apps.semievol does not pass argv"; return 1; }
}

check_flake_check() {
  nix "${nixopts[@]}" flake check -L "path:$src" "${flake[@]}" || return 1
  local log
  log=$(nix "${nixopts[@]}" log "path:$src#checks.x86_64-linux.pytest" "${flake[@]}" 2>/dev/null) || true
  echo "$log" | tail -n 5
  echo "$log" | grep -q 'stub-pytest argv: -q -m not slow -p no:cacheprovider tests' \
    || { echo "checks.pytest did not run pytest on tests/"; return 1; }
  echo "$log" | grep -qE '[0-9]+ tests? collected' || { echo "no tests collected"; return 1; }
}

check_devshell() {
  nix "${nixopts[@]}" build --no-link "path:$src#devShells.x86_64-linux.default" "${flake[@]}" || return 1
  eval_json 'devShells.x86_64-linux.default.name'
}

step parse check_parse || fail parse
step outputs check_outputs || fail outputs
step app check_app || fail app
step flake_check check_flake_check || fail flake_check
step devshell check_devshell || fail devshell
write_record pass
