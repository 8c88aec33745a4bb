"""What this process runs on: package versions, JAX backend and devices, XLA flags."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Flags the project sets itself (before any JAX backend starts) so that runs are
# reproducible without the user remembering them. GPU only: CPU and TPU are
# deterministic for our ops already.
DETERMINISM_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def set_determinism_flags() -> None:
    """Append the project's determinism flags to XLA_FLAGS (idempotent).

    Must run before JAX initialises a backend; the CLI calls it first thing.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in DETERMINISM_XLA_FLAGS if f.split("=")[0] not in flags]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


# transformers' one advisory warning, on import without PyTorch ("PyTorch was not found.
# Models won't be available ..."): this project loads weights itself and takes only
# tokenizers and configs from transformers, so the advisory tells its users nothing.
QUIET_ENV = {"TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def set_quiet_imports() -> None:
    """Silence transformers' PyTorch advisory (`QUIET_ENV`) for this process and the
    processes it starts, unless the caller's environment sets the variable itself.
    Must run before transformers is imported."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Persist compiled XLA programs across processes (demo reruns, verify, tests).

    `SEMIEVOL_XLA_CACHE` overrides the location; set it to "off" to disable. A cache hit
    returns the very program a compile would produce, so results do not change.
    """
    import jax  # imported late: this module is read before XLA_FLAGS are final

    path = path or os.environ.get("SEMIEVOL_XLA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "semievol-jax", "xla")
    if path == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def pinned_versions() -> dict[str, str]:
    """Installed version of this package's every declared dependency (extras included)."""
    versions = {"semievol-jax": metadata.version("semievol-jax")}
    for req in metadata.requires("semievol-jax") or []:
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if "extra ==" not in req:
                versions[name] = "MISSING"
    return dict(sorted(versions.items()))


# XLA compiles CPU programs for the host's vector units, so float rounding, and with it
# every digest, differs between e.g. an AVX-512 and an AVX2 machine even under the same
# "model name" (a hypervisor may report only "AMD EPYC"). These flags name the kind.
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
              "asimd", "sve")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The host CPU as `/proc/cpuinfo` names it: model, vendor, family / model numbers
    and the SIMD flags among `SIMD_FLAGS` (`platform` only where there is no such file).
    `cpuinfo` is that file's text (tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's entry
            fields[key.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {
        "model": fields.get("model name") or fields.get("Model") or platform.processor()
        or "unknown",
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or "",
        "family": "/".join(fields[k] for k in ("cpu family", "model", "CPU part")
                           if k in fields),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "cores": os.cpu_count(),
    }


def cpu_kind(info: dict[str, Any]) -> str:
    """One line naming a CPU from `cpu_info`, e.g. "AMD EPYC (family 25/1; avx2)"."""
    family = f"family {info['family']}; " if info.get("family") else ""
    return f"{info['model']} ({family}{'+'.join(info['simd']) or 'no listed SIMD'})"


def describe() -> dict[str, Any]:
    """Everything a reviewer pastes into a report."""
    import jax  # imported late: XLA_FLAGS must be final first

    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": pinned_versions(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "cpu": cpu_info(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
    }


def format_env(info: dict[str, Any]) -> str:
    lines = [f"python        {info['python']}", f"platform      {info['platform']}",
             f"jax backend   {info['jax_backend']}",
             f"devices       {len(info['devices'])} x {info['device_kind']}: "
             f"{', '.join(info['devices'])}",
             f"processes     {info['process_index']} of {info['process_count']}",
             f"cpu           {cpu_kind(info['cpu'])}, {info['cpu']['cores']} cores",
             f"XLA_FLAGS     {info['XLA_FLAGS'] or '(none)'}",
             f"JAX_PLATFORMS {info['JAX_PLATFORMS'] or '(unset)'}", "packages:"]
    lines += [f"  {k:<24} {v}" for k, v in info["packages"].items()]
    return "\n".join(lines)
