"""Generation time under glibc allocator settings, each in its own fresh process,
interleaved.

Same program, same weights, same prompts: a setting changes where freed memory goes,
never a result bit. The settings (glibc's `mallopt`):
- glibc_default: the mmap threshold starts at 128 KB and rises to each mapped block
  freed (up to 32 MB), the trim threshold with it (twice the mmap threshold);
- mmap_1mb: blocks of 1 MB or more get their own mapping, unmapped when freed;
- mmap_32mb: the same from 32 MB; a fixed mmap threshold also fixes the trim
  threshold at its 128 KB default, so freed blocks at the heap's top go back at once;
- mmap_16mb_trim_32mb: from 16 MB (above a decode step's largest per-layer buffers),
  with a trim threshold that keeps freed blocks below it for reuse;
- arena_1: glibc's thresholds, one heap for all threads (glibc gives each thread that
  allocates concurrently an arena of its own, up to 8 per core);
- configure_malloc: what the `semievol` command sets (environment.MALLOC_SETTINGS).
Per process: one warm-up call (compiles; `first_call_s`), then `--repeats` timed calls
of generate() (`--prompts` prompts of 100-300 words, 4 samples, 64 new tokens), and the
process's minor page faults and peak resident set. Writes results/bench/allocator.json.

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

from semievol_jax.environment import MALLOC_SETTINGS, set_determinism_flags, set_malloc

sys.path.insert(0, str(Path(__file__).resolve().parent))

MB = 1 << 20
SETTINGS = {"glibc_default": {},
            "mmap_1mb": {"mmap_threshold": MB},
            "mmap_32mb": {"mmap_threshold": 32 * MB},
            "mmap_16mb_trim_32mb": {"mmap_threshold": 16 * MB, "trim_threshold": 32 * MB},
            "arena_1": {"arena_max": 1},
            "configure_malloc": MALLOC_SETTINGS}


def child(setting: str, prompts: int, repeats: int) -> dict:
    set_determinism_flags()
    took = set_malloc(SETTINGS[setting])
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
    _, first_call = run_ours(model, tok, texts, cfg, 4, 100)  # compiles
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    runs = [run_ours(model, tok, texts, cfg, 4, r) for r in range(repeats)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"setting": setting, "mallopt_taken": took, "weights": weights,
            "first_call_s": round(first_call, 2),
            "seconds": [round(dt, 2) for _, dt in runs], "tokens": [n for n, _ in runs],
            "minor_page_faults_timed_calls": faults,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "jax": jax.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
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
        for setting in args.settings:
            proc = subprocess.run([sys.executable, __file__, "--child", setting, "--prompts",
                                   str(args.prompts), "--repeats", str(args.repeats)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1])
    best = {s: min(min(r["seconds"]) for r in rows if r["setting"] == s)
            for s in args.settings}
    doc = {"command": " ".join(["python scripts/bench_allocator.py", *sys.argv[1:]]),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "cpu_count": os.cpu_count(), "load_average_before": load,
           "load_average_after": load_average(),
           "generate": {"prompts": args.prompts, "samples": 4, "max_new_tokens": 64},
           "rows": rows, "best_seconds": best,
           "settings": {s: SETTINGS[s] for s in args.settings},
           "vs_fastest": {s: round(t / min(best.values()), 2) for s, t in best.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
