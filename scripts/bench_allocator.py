"""Generation time with and without `environment.return_large_frees` (glibc's mmap
threshold fixed at 1 MB), each setting in its own fresh process, interleaved.

Same program, same weights, same prompts: the setting changes where freed memory goes,
never a result bit. Per process: one warm-up call (compiles), then `--repeats` timed
calls of generate() (`--prompts` prompts of 100-300 words, 4 samples, 64 new tokens),
and the process's minor page faults. Writes results/bench/allocator.json.

Usage:
  python scripts/bench_allocator.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(setting: str, prompts: int, repeats: int) -> dict:
    from semievol_jax.environment import return_large_frees, set_determinism_flags

    set_determinism_flags()
    took = return_large_frees() if setting == "return_large_frees" else False
    import jax
    from bench_generate import load_hf, load_tokenizer, make_prompts, run_ours, smollm2_checkpoint

    from semievol_jax.generate.sampling import SampleConfig

    with tempfile.TemporaryDirectory() as work:
        ckpt, weights = smollm2_checkpoint(Path(work) / "smollm2")
        model, _ = load_hf(ckpt)
        tok = load_tokenizer(ckpt)
    texts = make_prompts(tok, prompts, 100, 300, seed=0)
    cfg = SampleConfig(temperature=1.0, max_new_tokens=64, stop=(), batch_size=16,
                       cache_tokens=16384)
    run_ours(model, tok, texts, cfg, 4, 100)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    runs = [run_ours(model, tok, texts, cfg, 4, r) for r in range(repeats)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"setting": setting, "mallopt_taken": took, "weights": weights,
            "seconds": [round(dt, 2) for _, dt in runs], "tokens": [n for n, _ in runs],
            "minor_page_faults_timed_calls": faults, "jax": jax.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="results/bench/allocator.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.prompts, args.repeats)))
        return 0
    from bench_common import load_average

    rows = []
    load = load_average()
    for _ in range(args.rounds):
        for setting in ("return_large_frees", "glibc_default"):
            proc = subprocess.run([sys.executable, __file__, "--child", setting, "--prompts",
                                   str(args.prompts), "--repeats", str(args.repeats)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1])
    best = {s: min(min(r["seconds"]) for r in rows if r["setting"] == s)
            for s in ("return_large_frees", "glibc_default")}
    doc = {"command": " ".join(["python scripts/bench_allocator.py", *sys.argv[1:]]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "cpu_count": os.cpu_count(), "load_average_before": load,
           "load_average_after": load_average(),
           "generate": {"prompts": args.prompts, "samples": 4, "max_new_tokens": 64},
           "rows": rows, "best_seconds": best,
           "slowdown_return_large_frees": round(best["return_large_frees"]
                                                / best["glibc_default"], 2)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
