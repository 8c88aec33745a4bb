"""What the benchmark scripts share: this CPU's peak FLOP/s, the machine's load and the
commit measured.

The theoretical peak is cores x clock x FP32 FLOPs per cycle of the CPU's FMA units: two
256-bit FMA pipes on AMD Zen 2-4 (32 FLOPs; Zen 4 runs AVX-512 on them in two halves),
two 512-bit ones on Intel AVX-512 server parts (64), else 32 with AVX2 + FMA, 16 without;
the measured one is XLA's own float32 matmul (2048^3) on all cores, what a perfect program
of dense matmuls could reach here. The same matmul is also timed per framework and dtype
(XLA and, where it is installed, torch; float32 and bfloat16), because the two do not
reach the same peak on every CPU: torch's oneDNN kernels use AVX-512 and Intel's AMX
tiles where the CPU has them, XLA:CPU's matmuls do not use AMX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def _best_of(run, repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def torch_matmul_peaks(n: int = 2048) -> dict:
    """torch's FLOP/s of one n^3 matmul per dtype, and its thread count."""
    import torch

    out: dict = {"threads": torch.get_num_threads()}
    for dt in ("float32", "bfloat16"):
        t = torch.ones((n, n), dtype=getattr(torch, dt))
        out[dt] = 2 * n**3 / _best_of(lambda t=t: t @ t)
    return out


def matmul_peaks(n: int = 2048) -> dict:
    """FLOP/s of one n^3 matmul per framework and dtype: {"jax": {"float32": ...}, ...}.
    torch's are timed in a child process, so that the caller's own process never runs
    torch before timing JAX (scripts/bench_train.py says why). JAX's bf16 matmul sums
    in float32, as the model's do (semievol_jax/model/matmul.py) and as oneDNN's does."""
    import jax
    import jax.numpy as jnp

    out: dict = {"jax": {}}
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    for dt in ("float32", "bfloat16"):
        a = jnp.ones((n, n), dt)
        out["jax"][dt] = 2 * n**3 / _best_of(lambda a=a: f(a).block_until_ready())
    # The plain bf16 dot, with a bf16 result: XLA:CPU gives it another kernel.
    plain = jax.jit(lambda x: x @ x)
    a = jnp.ones((n, n), "bfloat16")
    out["jax"]["bfloat16_with_bf16_result"] = 2 * n**3 / _best_of(
        lambda: plain(a).block_until_ready())
    if importlib.util.find_spec("torch") is not None:
        proc = subprocess.run([sys.executable, __file__, str(n)], capture_output=True,
                              text=True, check=True)
        out["torch"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def cpu_peak_flops() -> dict:
    """Theoretical and measured float32 peak of the cores this process may use, and each
    framework's measured matmul peak per dtype (``by_framework``)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    amd = info.get("vendor_id") == "AuthenticAMD"
    per_cycle = (64 if "avx512f" in flags and not amd else
                 32 if {"avx2", "fma"} <= flags else 16)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mhz = float(info.get("cpu MHz", "0") or 0)
    peaks = matmul_peaks()
    return {"model": info.get("model name", "unknown"), "cores": cores, "mhz": mhz,
            "fp32_flops_per_cycle": per_cycle,
            "isa": sorted(f for f in flags if f in ("avx2", "avx512f", "amx_bf16")),
            "theoretical_flops": cores * mhz * 1e6 * per_cycle if mhz else None,
            "measured_matmul_flops": peaks["jax"]["float32"], "by_framework": peaks}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_commit() -> str:
    """HEAD's commit, "+dirty" when tracked files differ from it; "unknown" outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, cwd=here,
                                       stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=here,
                               stderr=subprocess.DEVNULL).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":  # matmul_peaks' child: torch's peaks for an n^3 matmul
    print(json.dumps(torch_matmul_peaks(int(sys.argv[1]))))
