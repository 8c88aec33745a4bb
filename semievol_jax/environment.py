"""What this process runs on: package versions, JAX backend and devices, XLA flags."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from semievol_jax.errors import UserError

log = logging.getLogger(__name__)

# Flags the project sets itself (before any JAX backend starts) so that runs are
# reproducible without the user remembering them. GPU: deterministic reductions and
# scatters. CPU: see CPU_MODES.
DETERMINISM_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)

# How XLA computes on a CPU. Its defaults make the bits depend on the kind of CPU
# (results/repro/README.md): "platform dependent" math takes rsqrt from the hardware's
# approximation (implementation-defined bits) and lets YNNPACK pick matmul kernels per
# instruction set; and XLA's own code uses the widest vectors the host has, so a
# reduction of the LoRA step sums in another order on AVX-512 than on AVX2. The
# reproducible mode turns the first off and caps the second at AVX2, which every x86-64
# CPU of the last decade has: an AVX-512 Zen 4 then gives an AVX2 Zen 3's digests
# (`semievol selftest`). Thread count and turning YNNPACK off changed nothing more.
_X86 = platform.machine().lower() in ("x86_64", "amd64")
CPU_MODES: dict[str, tuple[str, ...]] = {
    "reproducible": ("--xla_cpu_enable_platform_dependent_math=false",
                     *(("--xla_cpu_max_isa=AVX2",) if _X86 else ())),
    "native": (),  # XLA's defaults: the host's fastest paths, digests per CPU kind
}
DEFAULT_CPU_MODE = "reproducible"
CPU_MODE_ENV = "SEMIEVOL_CPU_MODE"  # the opt-out: SEMIEVOL_CPU_MODE=native
CPU_MODE_KEY = "cpu_mode"  # where records (digests.json, provenance, reports) keep it


def _flag_values(flags: str) -> dict[str, str]:
    """--name=value pairs of an XLA_FLAGS string; the last occurrence wins, as in XLA."""
    out = {}
    for tok in flags.split():
        name, _, value = tok.partition("=")
        out[name] = value
    return out


def requested_cpu_mode(mode: str | None = None) -> str:
    """`mode`, else $SEMIEVOL_CPU_MODE, else the default.

    Raises:
      UserError: a name not in CPU_MODES.
    """
    mode = mode or os.environ.get(CPU_MODE_ENV) or DEFAULT_CPU_MODE
    if mode not in CPU_MODES:
        raise UserError(f"{CPU_MODE_ENV} must be one of {sorted(CPU_MODES)}, got {mode!r}")
    return mode


def set_determinism_flags(cpu_mode: str | None = None) -> str:
    """Add the project's determinism flags and the CPU mode's flags to XLA_FLAGS, where
    XLA_FLAGS does not set those flags itself; returns the CPU mode now in effect.

    The one place the flags are set: the CLI calls it first thing, the demo's workers
    and `sharding.initialize_runtime` again (idempotent). The mode is `cpu_mode`, else
    $SEMIEVOL_CPU_MODE, else "reproducible"; it is written back to $SEMIEVOL_CPU_MODE so
    that worker processes and reruns inherit it. XLA reads XLA_FLAGS once, when the
    first backend starts: after that nothing is changed (logged), so that
    XLA_FLAGS and `cpu_mode_in_effect()` keep telling what the backend was started with.
    """
    mode = requested_cpu_mode(cpu_mode)
    flags = os.environ.get("XLA_FLAGS", "")
    given = _flag_values(flags)
    missing = [f for f in (*DETERMINISM_XLA_FLAGS, *CPU_MODES[mode])
               if f.split("=")[0] not in given]
    if _backend_started():
        if missing or mode != cpu_mode_in_effect():
            log.info("JAX backend already started: XLA_FLAGS %s not applied; CPU mode "
                     "stays %r", missing, cpu_mode_in_effect())
        return cpu_mode_in_effect()
    os.environ[CPU_MODE_ENV] = mode
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
    return cpu_mode_in_effect()


def _backend_started() -> bool:
    if "jax" not in sys.modules:  # nothing can have started one
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def cpu_mode_in_effect(flags: str | None = None) -> str:
    """The CPU mode that XLA_FLAGS (or `flags`) amounts to: "reproducible" when it sets
    every flag of that mode to the mode's value, else "native"."""
    given = _flag_values(os.environ.get("XLA_FLAGS", "") if flags is None else flags)
    for mode, mode_flags in CPU_MODES.items():
        if mode_flags and all(given.get(f.split("=")[0]) == f.partition("=")[2]
                              for f in mode_flags):
            return mode
    return "native"


def cpu_mode_record() -> dict[str, str]:
    """What a record keeps of the mode: its name and the XLA_FLAGS it ran with."""
    return {"mode": cpu_mode_in_effect(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


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


MALLOC_ENV = "SEMIEVOL_MALLOC"  # "off" leaves the C library's defaults
MALLOPT_PARAMS = {"trim_threshold": -1, "mmap_threshold": -3, "arena_max": -8}  # glibc's
# What `configure_malloc` sets:
MALLOC_SETTINGS = {
    # Blocks of 16 MB or more (weights, KV caches, large XLA temporaries) get their own
    # mapping and leave with their free; a decode step's per-layer buffers (up to 12.6 MB
    # at 16,384 cache slot-tokens) stay below it, so the heap reuses them instead of the
    # kernel faulting fresh pages in for each.
    "mmap_threshold": 16 << 20,
    # Free space at the heap's top kept for reuse; with a fixed mmap threshold glibc
    # would otherwise keep 128 KB and hand every freed block back at once.
    "trim_threshold": 32 << 20,
    # One heap for all threads: XLA's worker threads otherwise each get an arena whose
    # free blocks the others cannot reuse.
    "arena_max": 1,
}


def set_malloc(settings: dict[str, int]) -> bool:
    """glibc's ``mallopt`` for each of `settings` (names of `MALLOPT_PARAMS`); a no-op
    with other C libraries. Returns whether the C library took every one."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    took = [mallopt(MALLOPT_PARAMS[name], value) == 1 for name, value in settings.items()]
    return all(took)  # every one tried, even after a refusal


def glibc_tunables(text: str | None) -> dict[str, str]:
    """A GLIBC_TUNABLES string ("name=value:name=value") as a dict."""
    return dict(kv.split("=", 1) for kv in (text or "").split(":") if "=" in kv)


def configure_malloc() -> bool:
    """Sets `MALLOC_SETTINGS`, before the backend starts its threads, unless
    SEMIEVOL_MALLOC=off or the process started with glibc tunables for any of them (a
    user's, or the demo workers', pipeline/parallel.py). Tunables
    that set none of them, such as ``glibc.malloc.hugetlb=1`` (transparent huge pages
    for malloc's memory, so the kernel faults a large buffer in 2 MB at a time), leave
    them to be set here.

    By default glibc raises the mmap threshold to the size of each large block freed
    (up to 32 MB), so a long run keeps ever larger freed buffers in its heaps, where
    fragmentation holds them resident, and each stage's peak starts higher than the
    last. A threshold low enough to return everything (1 MB) makes the kernel fault
    every buffer in again at each decode step: generation 1.5x slower
    (results/bench/allocator.json). Returns whether the C library took every setting.
    """
    given = glibc_tunables(os.environ.get("GLIBC_TUNABLES"))
    if (os.environ.get(MALLOC_ENV, "") == "off"
            or any(f"glibc.malloc.{name}" in given for name in MALLOC_SETTINGS)):
        return False
    return set_malloc(MALLOC_SETTINGS)


DROP_PROGRAMS_ENV = "SEMIEVOL_DROP_PROGRAMS"  # "1": drop compiled programs between stages


def drop_programs_between_stages() -> bool:
    """Whether the pipeline drops its in-memory compiled programs after each stage:
    asked for ($SEMIEVOL_DROP_PROGRAMS=1) and a persistent compilation cache is on to
    give them back. Off by default: a toy model's programs are small and compile in
    under the cache's 0.5 s threshold, so dropping them only means compiling them again.
    """
    import jax  # imported late, as in enable_compilation_cache

    return (os.environ.get(DROP_PROGRAMS_ENV, "") == "1"
            and bool(jax.config.jax_compilation_cache_dir))


def release_free_memory(*, compiled_programs: bool = False) -> None:
    """Hands the heap pages this process holds free back to the kernel (glibc's
    ``malloc_trim``; a no-op with other C libraries).

    A finished stage frees its model and buffers, but glibc keeps freed pages in the
    middle of its heap resident; the next stage's largest buffers (mmap'd, above the
    heap) then add to them instead of reusing them, and each stage's high-water mark
    starts from the last one's.

    ``compiled_programs`` also drops JAX's in-memory compiled programs and traces
    (``jax.clear_caches``): a 30-layer model's decode and training executables hold
    tens of MB each and a run compiles a few hundred. Only worth it where a persistent
    compilation cache holds them, so that a later use loads one from disk instead of
    compiling it again.
    """
    if compiled_programs:
        import jax

        jax.clear_caches()
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


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
        "cpu_mode": cpu_mode_in_effect(),
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
             f"cpu mode      {info['cpu_mode']} ({CPU_MODE_ENV}=native|reproducible)",
             f"XLA_FLAGS     {info['XLA_FLAGS'] or '(none)'}",
             f"JAX_PLATFORMS {info['JAX_PLATFORMS'] or '(unset)'}", "packages:"]
    lines += [f"  {k:<24} {v}" for k, v in info["packages"].items()]
    return "\n".join(lines)
