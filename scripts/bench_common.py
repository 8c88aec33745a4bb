"""What the benchmark scripts share: this CPU's peak FLOP/s and the machine's load.

The theoretical peak is cores x clock x FP32 FLOPs per cycle of the CPU's FMA units: two
256-bit FMA pipes on AMD Zen 2-4 (32 FLOPs; Zen 4 runs AVX-512 on them in two halves),
two 512-bit ones on Intel AVX-512 server parts (64), else 32 with AVX2 + FMA, 16 without;
the measured one is XLA's own float32 matmul (2048^3) on all cores, what a perfect program
of dense matmuls could reach here.
"""

from __future__ import annotations

import os
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


def cpu_peak_flops() -> dict:
    """Theoretical and measured float32 peak of the cores this process may use."""
    import jax
    import jax.numpy as jnp

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    amd = info.get("vendor_id") == "AuthenticAMD"
    per_cycle = (64 if "avx512f" in flags and not amd else
                 32 if {"avx2", "fma"} <= flags else 16)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mhz = float(info.get("cpu MHz", "0") or 0)
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    measured = 2 * n**3 / min(times)
    return {"model": info.get("model name", "unknown"), "cores": cores, "mhz": mhz,
            "fp32_flops_per_cycle": per_cycle,
            "theoretical_flops": cores * mhz * 1e6 * per_cycle if mhz else None,
            "measured_matmul_flops": measured}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
