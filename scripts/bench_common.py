"""What the benchmark scripts share: this CPU's peak FLOP/s, the matmul ceiling of a
decode step, the machine's load and the commit measured.

The theoretical peak is cores x clock x FP32 FLOPs per cycle of the CPU's FMA units: two
256-bit FMA pipes on AMD Zen 2-4 (32 FLOPs; Zen 4 runs AVX-512 on them in two halves),
two 512-bit ones on Intel AVX-512 server parts (64), else 32 with AVX2 + FMA, 16 without.
The measured one is XLA's own float32 matmul (2048^3) on all cores; a measured peak may
pass the theoretical one where the clock runs above /proc/cpuinfo's "cpu MHz". The same
matmul is also timed per framework and dtype (XLA and, where it is installed, torch;
float32 and bfloat16), because the two do not reach the same peak on every CPU: torch's
oneDNN kernels use AVX-512 and Intel's AMX tiles where the CPU has them, XLA:CPU's use
AMX only for bf16 dots summed in float32 with the ISA uncapped
(semievol_jax/model/matmul.py). A dtype that the CPU only emulates is timed at a smaller
size (``_peak_flops``).
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


# The vector ISAs that set the matmul peak, as /proc/cpuinfo's flags name them.
VECTOR_ISAS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    """The CPU, for records that several machines write: /proc/cpuinfo's model name,
    family and model, and the vector ISAs that set the matmul peak. The name alone may
    not tell two parts apart ("AMD EPYC" is written by Zen 3 and Zen 4 machines)."""
    import platform

    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = [f for f in VECTOR_ISAS if f in flags]
    parts = [f"family {info['cpu family']} model {info['model']}"] if "model" in info else []
    if isa:
        parts.append(", ".join(isa))
    return f"{name} ({'; '.join(parts)})" if parts else name


def _best_of(run, repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def _peak_flops(time_at, n: int) -> tuple[float, int]:
    """(FLOP/s, m) of an m^3 matmul, `time_at(m, repeats)` timing one (best of 5): m is
    n, unless a first 256^3 matmul says an n^3 one would take over a second. A CPU
    without the dtype's instructions emulates it (torch's bf16 on AVX2 alone: a few
    GFLOP/s, results/bench/train.json key smollm2-135m/cpu/epyc); m is then sized for
    about 0.2 s a matmul."""
    rate = 2 * 256**3 / time_at(256, repeats=1)
    m = n if 2 * n**3 / rate <= 1.0 else max(256, int((0.1 * rate) ** (1 / 3)) // 64 * 64)
    return 2 * m**3 / time_at(m, repeats=5), m


def torch_matmul_peaks(n: int = 2048) -> dict:
    """torch's FLOP/s of one matmul per dtype (at most n^3; ``sizes``: each one's side),
    and its thread count."""
    import torch

    out: dict = {"threads": torch.get_num_threads(), "sizes": {}}
    for dt in ("float32", "bfloat16"):
        def time_at(m, repeats, dt=dt):
            t = torch.ones((m, m), dtype=getattr(torch, dt))
            return _best_of(lambda: t @ t, repeats)

        out[dt], out["sizes"][dt] = _peak_flops(time_at, n)
    return out


def matmul_peaks(n: int = 2048) -> dict:
    """FLOP/s of one matmul (at most n^3) per framework and dtype: {"jax": {"float32":
    ..., "sizes": {"float32": 2048, ...}}, ...}.
    torch's are timed in a child process, so that the caller's own process never runs
    torch before timing JAX (scripts/bench_train.py says why). JAX's bf16 matmul sums
    in float32, as the model's do (semievol_jax/model/matmul.py) and as oneDNN's does."""
    import jax
    import jax.numpy as jnp

    out: dict = {"jax": {"sizes": {}}}
    summed = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    plain = jax.jit(lambda x: x @ x)  # a bf16 result: XLA:CPU gives it another kernel
    for name, f, dt in (("float32", summed, "float32"), ("bfloat16", summed, "bfloat16"),
                        ("bfloat16_with_bf16_result", plain, "bfloat16")):
        def time_at(m, repeats, f=f, dt=dt):
            a = jnp.ones((m, m), dt)
            return _best_of(lambda: f(a).block_until_ready(), repeats)

        out["jax"][name], out["jax"]["sizes"][name] = _peak_flops(time_at, n)
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
            "isa": [f for f in VECTOR_ISAS if f in flags],
            "theoretical_flops": cores * mhz * 1e6 * per_cycle if mhz else None,
            "measured_matmul_flops": peaks["jax"]["float32"], "by_framework": peaks}


def decode_projections(shape: dict) -> list[tuple[int, int]]:
    """(out, in) of one decoder layer's seven projections, in the order a step runs them."""
    D, F, H = shape["hidden_size"], shape["intermediate_size"], shape["head_dim"]
    NH, KH = shape["num_heads"] * H, shape["num_kv_heads"] * H
    return [(NH, D), (KH, D), (KH, D), (D, NH), (F, D), (F, D), (D, F)]


def jax_decode_matmul_step_s(shape: dict, rows: int) -> float:
    """Seconds of one float32 decode step's matmuls for `rows` slots in XLA, with only
    the RMS norms and SiLU between them: the layers' projections, scanned over stacked
    [L, out, in] weights as the model stores them, then the tied LM head. Best of 10.
    The model's decode step runs these matmuls in this layout, and attention over the
    cache, sampling and log-probs on top, so it can run no faster than this."""
    import jax
    import jax.numpy as jnp

    L, D, V = shape["num_layers"], shape["hidden_size"], shape["vocab_size"]
    key = jax.random.key(0)
    w_LOI = [jax.random.normal(jax.random.fold_in(key, i), (L, o, n), jnp.float32) * n**-0.5
             for i, (o, n) in enumerate(decode_projections(shape))]
    head_VD = jax.random.normal(jax.random.fold_in(key, 99), (V, D), jnp.float32) * D**-0.5
    x_RD = jax.random.normal(jax.random.fold_in(key, 100), (rows, D), jnp.float32)

    def mm(a, w):
        return jnp.einsum("...I,OI->...O", a, w)

    @jax.jit
    def step(x_RD, w_LOI, head_VD):
        def layer(carry, w):
            x, kv = carry
            q, k, v, o, gate, up, down = w
            x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
            kv = kv + mm(x, k) + mm(x, v)  # returned: XLA may drop none of the two
            x = x + mm(mm(x, q), o)
            return (x + mm(jax.nn.silu(mm(x, gate)) * mm(x, up), down), kv), None

        kv = jnp.zeros((rows, w_LOI[1].shape[1]), jnp.float32)
        (x, kv), _ = jax.lax.scan(layer, (x_RD, kv), tuple(w_LOI))
        return mm(x, head_VD), kv

    return _best_of(lambda: jax.block_until_ready(step(x_RD, w_LOI, head_VD)), repeats=10)


def torch_decode_matmul_step_s(shape: dict, rows: int) -> float:
    """:func:`jax_decode_matmul_step_s` in torch: ``F.linear`` over per-layer weights,
    as HF's Llama runs them. Best of 10."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    L, D, V = shape["num_layers"], shape["hidden_size"], shape["vocab_size"]
    w_LOI = [[torch.randn(o, n, generator=g) * n**-0.5 for o, n in decode_projections(shape)]
             for _ in range(L)]
    head_VD = torch.randn(V, D, generator=g) * D**-0.5
    x_RD = torch.randn(rows, D, generator=g)

    def step():
        with torch.no_grad():
            h, kv = x_RD, 0
            for q, k, v, o, gate, up, down in w_LOI:
                h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
                kv = kv + F.linear(h, k) + F.linear(h, v)
                h = h + F.linear(F.linear(h, q), o)
                h = h + F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)
            return F.linear(h, head_VD), kv

    return _best_of(step, repeats=10)


def decode_matmul_ceiling(shape: dict, rows: int) -> dict:
    """Per framework: the seconds of one float32 decode step's matmuls for `rows` slots,
    in the framework's own weight layout, and the tokens/s they bound (rows per step
    over those seconds, every slot live). torch is timed in a child process, as in
    :func:`matmul_peaks`."""
    s = jax_decode_matmul_step_s(shape, rows)
    out: dict = {"rows": rows, "dtype": "float32",
                 "jax": {"step_s": s, "tokens_per_s": round(rows / s, 1)}}
    if importlib.util.find_spec("torch") is not None:
        proc = subprocess.run([sys.executable, __file__, "decode", json.dumps(shape),
                               str(rows)], capture_output=True, text=True, check=True)
        s = json.loads(proc.stdout.strip().splitlines()[-1])
        out["torch"] = {"step_s": s, "tokens_per_s": round(rows / s, 1)}
    return out


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


if __name__ == "__main__":
    if sys.argv[1] == "decode":  # torch_decode_matmul_step_s in a child: shape, rows
        print(json.dumps(torch_decode_matmul_step_s(json.loads(sys.argv[2]), int(sys.argv[3]))))
    else:  # matmul_peaks' child: torch's peaks for an n^3 matmul
        print(json.dumps(torch_matmul_peaks(int(sys.argv[1]))))
