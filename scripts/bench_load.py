"""Benchmark: peak host memory of `load_hf` vs the size of the weights it loads.

Safetensors: a random float32 Llama (D 1536, F 4096, L 8, N 12 / K 4, V 32000, untied:
1.2 GB) written as sharded safetensors. GGUF: SmolLM2-135M-Instruct's Q4_1 file (fetched
into the cache when absent), whose weights dequantize to 0.54 GB of float32. Each load
runs in a fresh subprocess, which reports its peak RSS (ru_maxrss). Rows: `load_hf`
(streamed), `load_hf` onto a 1-device mesh (the make_array_from_callback path used for
sharded loading), a naive reference that reads every tensor first
(safetensors.numpy.load_file), the same two `load_hf` rows on the GGUF file, and
transformers' own GGUF loader on torch (the peer). The goal is a peak *increase* over
the post-import baseline below 1.3x the float32 size of the weights.

Tokenizer rows (`tokenizer_rows`, each in a fresh subprocess too): the resident set a
process gains, and keeps, from SmolLM2's tokenizer built from the GGUF metadata (an
empty cache), read back from the cache's `tokenizer.json`, and from importing
transformers' `AutoTokenizer` (which imports torch where it is installed).

Usage:
    python scripts/bench_load.py                     # writes results/bench/load.json
    python scripts/bench_load.py --layers 2 --no-json   # quick look
    python scripts/bench_load.py --only-tokenizer     # the tokenizer rows of load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("load_hf", "load_hf_mesh", "naive_load_file")
GGUF_MODES = ("gguf_load_hf", "gguf_load_hf_mesh", "gguf_transformers_torch")
TOKENIZER_MODES = ("tokenizer_build", "tokenizer_cached", "import_auto_tokenizer")


def write_checkpoint(out: Path, args: argparse.Namespace) -> int:
    """Random HF checkpoint written shard by shard; returns the weights' total bytes."""
    from safetensors.numpy import save_file

    from semievol_jax.model import LlamaConfig
    from semievol_jax.model.hf_io import hf_tensor_shapes

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=args.mlp, num_layers=args.layers,
                      num_heads=args.heads, num_kv_heads=args.kv_heads,
                      head_dim=args.hidden // args.heads)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for name, shape in hf_tensor_shapes(cfg).items():
        nbytes = int(np.prod(shape)) * 4
        if sizes[-1] and sizes[-1] + nbytes > args.shard_mb * 2**20:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = shape
        sizes[-1] += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: np.ones(s, np.float32) if n.endswith("norm.weight")
                   else 0.02 * rng.standard_normal(s, dtype=np.float32)
                   for n, s in shard.items()}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
        del tensors
    total = sum(sizes)
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(cfg.to_hf()))
    return total


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def tokenizer_child(mode: str, gguf: Path) -> None:
    """One tokenizer measurement in this (fresh) process, printed as a JSON line: the
    resident set before, at the end with the tokenizer kept (as a run keeps it), and
    the seconds it took."""
    import gc

    import jax
    import jax.numpy as jnp
    from transformers import PreTrainedTokenizerFast  # noqa: F401  (every mode needs it)

    from semievol_jax.environment import release_free_memory
    from semievol_jax.model import gguf_io

    jax.block_until_ready(jnp.ones(8) + 1)
    gguf_io.tokenizer_cache_entry(gguf)  # the header parse, shared with load_hf
    release_free_memory()
    baseline = _rss_bytes()
    t0 = time.perf_counter()
    if mode == "import_auto_tokenizer":
        from transformers import AutoTokenizer  # noqa: F401
        kept = None
    else:
        kept = gguf_io.load_gguf_tokenizer(gguf)
    seconds = time.perf_counter() - t0
    gc.collect()
    release_free_memory()
    print(json.dumps({"mode": mode, "baseline_rss": baseline, "final_rss": _rss_bytes(),
                      "kept_increase": _rss_bytes() - baseline, "seconds": seconds,
                      "torch_imported": "torch" in sys.modules,
                      "vocab": None if kept is None else len(kept)}))


def tokenizer_rows(gguf: Path) -> list[dict]:
    """The TOKENIZER_MODES rows: the build with an empty cache, the cached read after it."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "SEMIEVOL_CACHE": cache}
        # the model file itself stays where it is: only the tokenizer cache is fresh
        for mode in TOKENIZER_MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--ckpt", str(gguf)],
                check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def child(mode: str, ckpt: Path) -> None:
    """Runs one load in this (fresh) process and prints a JSON line of measurements."""
    import jax
    import jax.numpy as jnp

    from semievol_jax.model import load_hf

    if mode == "gguf_transformers_torch":
        import torch
        import transformers

    jax.block_until_ready(jnp.ones(8) + 1)  # runtime and allocator up before the baseline
    baseline = _rss_bytes()
    t0 = time.perf_counter()
    if mode == "gguf_transformers_torch":
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(ckpt.parent), gguf_file=ckpt.name, dtype=torch.float32)
        model = {k: v.numpy() for k, v in model.state_dict().items()}
    elif mode in ("load_hf", "gguf_load_hf"):
        model, _ = load_hf(ckpt)
    elif mode in ("load_hf_mesh", "gguf_load_hf_mesh"):
        mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 3)
        model, _ = load_hf(ckpt, mesh=mesh)
    else:
        from safetensors.numpy import load_file

        index = json.loads((ckpt / "model.safetensors.index.json").read_text())
        tensors = {}
        for file in sorted(set(index["weight_map"].values())):
            tensors.update(load_file(str(ckpt / file)))
        model = {k: jax.device_put(v) for k, v in tensors.items()}
    jax.block_until_ready(jax.tree.leaves(model if isinstance(model, dict) else
                                          __import__("flax").nnx.state(model)))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "baseline_rss": baseline, "peak_rss": peak,
                      "final_rss": _rss_bytes(), "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--mlp", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shard-mb", type=int, default=400)
    p.add_argument("--workdir", default=None, help="where to write the checkpoint (temp dir)")
    p.add_argument("--no-json", action="store_true")
    p.add_argument("--no-gguf", action="store_true", help="skip the SmolLM2 GGUF rows")
    p.add_argument("--only-tokenizer", action="store_true",
                   help="measure the tokenizer rows alone and update them in load.json")
    p.add_argument("--child", choices=MODES + GGUF_MODES + TOKENIZER_MODES,
                   help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child in TOKENIZER_MODES:
        tokenizer_child(args.child, Path(args.ckpt))
        return
    if args.child:
        child(args.child, Path(args.ckpt))
        return
    out = Path(__file__).resolve().parent.parent / "results" / "bench" / "load.json"
    if args.only_tokenizer:
        from semievol_jax.model import registry

        rows = tokenizer_rows(registry.fetch("smollm2-135m-instruct"))
        _print_tokenizer(rows)
        if not args.no_json:
            doc = json.loads(out.read_text()) if out.is_file() else {}
            doc["tokenizer_command"] = "python " + " ".join(sys.argv)
            doc["tokenizer_rows"] = rows
            out.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {out}")
        return

    def measure(mode: str, ckpt: Path, size: int) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--ckpt", str(ckpt)],
            check=True, capture_output=True, text=True, env={**os.environ,
                                                          "JAX_PLATFORMS": "cpu"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["weights_bytes"] = size
        row["peak_increase"] = row["peak_rss"] - row["baseline_rss"]
        row["increase_over_size"] = row["peak_increase"] / size
        row["peak_over_size"] = row["peak_rss"] / size
        return row

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        ckpt = Path(tmp) / "ckpt"
        size = write_checkpoint(ckpt, args)
        rows = [measure(mode, ckpt, size) for mode in MODES]
    gguf = None
    if not args.no_gguf:
        from semievol_jax.model import GGUFCheckpoint, registry

        path = registry.fetch("smollm2-135m-instruct")
        ck = GGUFCheckpoint(path)
        fp32 = sum(int(np.prod(s)) for s in ck.shapes.values()) * 4
        gguf = {"file": path.name, "file_bytes": path.stat().st_size, "float32_bytes": fp32}
        rows += [measure(mode, path, fp32) for mode in GGUF_MODES]
        tok_rows = tokenizer_rows(path)

    gib = 2**30
    print(f"safetensors: {size / gib:.3f} GiB float32, {args.layers} layers, D={args.hidden}")
    if gguf:
        print(f"gguf: {gguf['file']} ({gguf['file_bytes'] / gib:.3f} GiB on disk, "
              f"{gguf['float32_bytes'] / gib:.3f} GiB as float32)")
    print(f"{'mode':<18}{'baseline GiB':>13}{'peak GiB':>10}{'increase GiB':>14}"
          f"{'increase/size':>15}{'seconds':>9}")
    for r in rows:
        print(f"{r['mode']:<18}{r['baseline_rss'] / gib:>13.3f}{r['peak_rss'] / gib:>10.3f}"
              f"{r['peak_increase'] / gib:>14.3f}{r['increase_over_size']:>15.2f}"
              f"{r['seconds']:>9.1f}")
    if gguf:
        _print_tokenizer(tok_rows)
    if args.no_json:
        return
    import jax

    result = {
        "benchmark": "load_hf peak host RSS vs checkpoint size",
        "command": "python " + " ".join(sys.argv),
        "device": {"platform": platform.platform(), "machine": platform.machine(),
                   "cpu_count": os.cpu_count(), "jax_devices": [str(d) for d in jax.devices()],
                   "jax": jax.__version__, "python": platform.python_version()},
        "checkpoint": {"bytes": size, "dtype": "float32", "hidden": args.hidden,
                       "mlp": args.mlp, "layers": args.layers, "heads": args.heads,
                       "kv_heads": args.kv_heads, "vocab": args.vocab,
                       "shard_mb": args.shard_mb},
        "gguf": gguf,
        "goal": "peak_increase / float32 bytes of the weights < 1.3",
        "rows": rows,
        **({"tokenizer_rows": tok_rows} if gguf else {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _print_tokenizer(rows: list[dict]) -> None:
    print(f"{'tokenizer mode':<24}{'kept MB':>9}{'seconds':>9}  torch imported")
    for r in rows:
        print(f"{r['mode']:<24}{r['kept_increase'] / 1e6:>9.0f}{r['seconds']:>9.2f}  "
              f"{r['torch_imported']}")


if __name__ == "__main__":
    main()
