"""One real-model run end to end, measured: wall time, peak memory, compile time, stages.

The SmolLM2-135M-Instruct preset on the official files cut to `--rows` rows per split
(mmlu by default: four options), LoRA, 4 collaborators, one demonstration, run in this
process from an empty run directory with an empty persistent XLA cache. Measured:
  wall_s            the run, from config to report
  peak_rss_bytes    this process's peak resident set (ru_maxrss or the largest
                    sample below; no children)
  stage_peak_rss_bytes  per stage, the largest resident set sampled (every 0.1 s from
                    /proc/self/status) while it ran; a stage runs until its output
                    directory appears in the run directory
  stage_largest_program  per stage, XLA's memory stats of the program compiled in it
                    with the most temporaries (temp, argument and output bytes)
  stage_compile     per stage, the programs compiled, their compile seconds (timed
                    around XLA's compile call), and the names that took longest
  memory_budget     the sizes the settings imply: weights, LoRA and Adam state, the
                    largest KV cache a decode batch may hold
  compile_s         seconds XLA spent compiling (jax.monitoring's backend-compile
                    events), and trace_s the tracing to StableHLO before it
  programs_loaded_from_cache, cache_load_s  programs a later stage loaded back from
                    the persistent cache (with SEMIEVOL_DROP_PROGRAMS=1, set here unless
                    given, the pipeline drops its in-memory programs between stages),
                    and the seconds that took
  stages            per stage: seconds, from the stage records
  stage_digests     per stage, the digest of its outputs (equal digests: equal results)
  code              the commit measured ("+dirty": with uncommitted changes)
Writes results/bench/real_run.json (key: --key, default `<task>-<rows>/<backend>`).
`--random-weights` uses random weights of SmolLM2's shape written as an HF checkpoint
(for machines the 98 MB file cannot reach, e.g. the GPU script).

Usage:
  python scripts/real_run.py --task mmlu --rows 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=2048)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
               num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True,
               rope_theta=100000.0, max_position_embeddings=8192)


def _random_model(out: Path, shape: dict) -> Path:
    """Random weights of `shape` with the tiny byte-level tokenizer."""
    from semievol_jax.model import save_hf
    from semievol_jax.model.tiny import config_for_tokenizer, random_llama, train_tokenizer

    words = ("the answer is a b c d question option true false which of these is "
             "correct answer: sentiment positive negative neutral").split()
    tok = train_tokenizer([" ".join(words)] * 4, 384)
    cfg = config_for_tokenizer(tok, **shape)
    return save_hf(random_llama(cfg, seed=0), out, tok)


def _finished_stages(run_dir: Path) -> int:
    """Stages finished so far: their output directories in the run directory."""
    done = re.compile(r"^\d\d_\w+$")
    return sum(1 for p in run_dir.iterdir() if done.match(p.name)) if run_dir.is_dir() else 0


class StageMemory:
    """Samples this process's resident set and tags each sample with the number of
    stages finished so far."""

    def __init__(self, run_dir: Path, every_s: float = 0.1):
        self.run_dir, self.every_s = run_dir, every_s
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            rss, finished = _rss_bytes(), _finished_stages(self.run_dir)
            self.peaks[finished] = max(self.peaks.get(finished, 0), rss)

    def __enter__(self) -> StageMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def per_stage(self, names: list[str]) -> dict[str, int]:
        return {name: self.peaks[i] for i, name in enumerate(names) if i in self.peaks}


class ProgramMemory:
    """XLA's own accounting of the programs compiled in each stage: the largest
    temporaries (activations, attention scores) one program needs, with its arguments
    and outputs, and the seconds each program's compile took, by name. Read from each
    executable as JAX compiles it, through JAX's private compiler module: where that
    hook is missing, nothing is recorded."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.largest: dict[int, dict[str, int]] = {}
        self.seconds: dict[int, dict[str, list]] = {}  # stage -> name -> [count, s]
        self._compiler = self._orig = None

    def _record(self, executable) -> None:
        m = executable.get_compiled_memory_stats()
        row = {"temp_bytes": m.temp_size_in_bytes, "argument_bytes": m.argument_size_in_bytes,
               "output_bytes": m.output_size_in_bytes}
        i = _finished_stages(self.run_dir)
        if row["temp_bytes"] >= self.largest.get(i, {}).get("temp_bytes", -1):
            self.largest[i] = row

    def _time(self, module, seconds: float) -> None:
        try:
            name = str(module.operation.attributes["sym_name"]).strip('"')
        except Exception:  # a module without a name: counted all the same
            name = "?"
        per = self.seconds.setdefault(_finished_stages(self.run_dir), {})
        count, total = per.get(name, (0, 0.0))
        per[name] = [count + 1, total + seconds]

    def __enter__(self) -> ProgramMemory:
        try:
            from jax._src import compiler
        except ImportError:
            return self
        orig = getattr(compiler, "backend_compile_and_load", None)
        if orig is None:
            return self

        def compile_and_record(backend, module, *args, **kw):
            t0 = time.perf_counter()
            executable = orig(backend, module, *args, **kw)
            self._time(module, time.perf_counter() - t0)
            try:
                self._record(executable)
            except Exception:  # a backend without memory stats: leave the stage out
                pass
            return executable

        self._compiler, self._orig = compiler, orig
        compiler.backend_compile_and_load = compile_and_record
        return self

    def __exit__(self, *_: object) -> None:
        if self._compiler is not None:
            self._compiler.backend_compile_and_load = self._orig

    def per_stage(self, names: list[str]) -> dict[str, dict[str, int]]:
        return {name: self.largest[i] for i, name in enumerate(names) if i in self.largest}

    def compile_per_stage(self, names: list[str], top: int = 8) -> dict[str, dict]:
        """Per stage: its programs' count and compile seconds, and the `top` names
        that took longest, each with [programs of that name, seconds]."""
        out = {}
        for i, name in enumerate(names):
            per = self.seconds.get(i, {})
            ranked = sorted(per.items(), key=lambda kv: -kv[1][1])[:top]
            out[name] = {"programs": sum(c for c, _ in per.values()),
                         "seconds": round(sum(s for _, s in per.values()), 1),
                         "longest": {k: [c, round(s, 1)] for k, (c, s) in ranked}}
        return out


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_budget(cfg, shape: dict) -> dict[str, int]:
    """Bytes the settings imply, before activations: float32 weights, the LoRA factors
    with Adam's two moments, and the largest KV cache a decode batch may hold."""
    from estimate_preset import model_counts

    counts = model_counts(shape, cfg.sft.lora.rank)
    slot_token = 4 * counts["kv_values_per_token"]
    caches = [s.cache_tokens for s in (cfg.propose.sample, cfg.select.reflect_sample,
                                       cfg.eval.sample)]
    return {"weights_float32": 4 * counts["n"],
            "lora_params_and_adam": 3 * 4 * counts["n_lora"],
            "kv_cache_per_slot_token": slot_token,
            "kv_cache_largest_batch": slot_token * max(caches)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mmlu")
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--data", default="../shared/data/semievol", help="official data root")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--tiny", action="store_true",
                    help="random weights of a 2-layer toy shape (a smoke test of the script)")
    ap.add_argument("--run-dir", default=None, help="default: a temporary directory")
    ap.add_argument("--key", default=None)
    ap.add_argument("--out", default="results/bench/real_run.json")
    ap.add_argument("--malloc", choices=("configure", "glibc_default"), default="configure",
                    help="glibc allocator settings: the `semievol` command's, or glibc's own")
    ap.add_argument("overrides", nargs="*", help="more dotted overrides")
    args = ap.parse_args()

    from semievol_jax.environment import (
        configure_malloc,
        cpu_mode_in_effect,
        set_determinism_flags,
        set_quiet_imports,
    )

    set_determinism_flags()
    set_quiet_imports()
    if args.malloc == "configure":
        configure_malloc()  # as the `semievol` command does
    # Cold, as a first `semievol run` on a machine: the persistent compilation cache is
    # on (the pipeline drops its in-memory programs between stages, SEMIEVOL_DROP_PROGRAMS,
    # and loads them back from it) but starts empty, so every program is compiled once.
    tmp = tempfile.TemporaryDirectory()
    fresh_cache = str(Path(tmp.name) / "xla")
    os.environ.setdefault("SEMIEVOL_XLA_CACHE", fresh_cache)
    os.environ.setdefault("SEMIEVOL_DROP_PROGRAMS", "1")  # what a 30-layer model wants
    import jax
    from bench_common import cpu_model, git_commit, load_average
    from jax import monitoring

    from semievol_jax.config import load_config
    from semievol_jax.environment import drop_programs_between_stages, enable_compilation_cache
    from semievol_jax.pipeline import graph, summary
    from semievol_jax.pipeline.config import RunConfig

    cache_dir = enable_compilation_cache()
    spent = {"/jax/core/compile/backend_compile_duration": 0.0,
             "/jax/core/compile/jaxpr_trace_duration": 0.0,
             "/jax/compilation_cache/cache_retrieval_time_sec": 0.0}
    counts = {k: 0 for k in spent}

    def listen(event: str, seconds: float, **_: object) -> None:
        if event in spent:
            spent[event] += seconds
            counts[event] += 1

    monitoring.register_event_duration_secs_listener(listen)
    root = Path(args.data) / args.task
    overrides = [f"data.{s}={root / s}.csv" for s in ("labeled", "unlabeled", "test")]
    overrides += [f"data.max_rows={args.rows}", *args.overrides]
    if args.random_weights or args.tiny:
        shape = TINY if args.tiny else SMOLLM2
        overrides.append(f"base.model={_random_model(Path(tmp.name) / 'random', shape)}")
    load_before = load_average()
    code = git_commit()  # the code this process runs: taken before the run starts
    start = time.perf_counter()
    cfg = load_config(RunConfig, f"smollm2-{args.task}", overrides)
    run_dir = Path(args.run_dir or Path(tmp.name) / "run")
    with StageMemory(run_dir) as sampled, ProgramMemory(run_dir) as programs:
        records = graph.run_pipeline(cfg, run_dir)
    wall = time.perf_counter() - start
    stage_peaks = sampled.per_stage(list(records))
    # The kernel's high-water mark and the samples of VmRSS count pages a little
    # differently (a sample can exceed ru_maxrss by a few hundred KB): the larger wins.
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               *stage_peaks.values(), 0)
    stages = summary.stage_seconds({cfg.seed: {"semievol": records}})
    result = {
        "command": "python scripts/real_run.py " + " ".join(sys.argv[1:]),
        "task": args.task, "rows_per_split": args.rows,
        "weights": ("random (2-layer toy shape)" if args.tiny else "random (SmolLM2's shape)"
                    if args.random_weights else "SmolLM2-135M-Instruct"),
        "wall_s": round(wall, 1), "peak_rss_bytes": peak,
        "compile_s": round(spent["/jax/core/compile/backend_compile_duration"], 1),
        "programs_compiled": counts["/jax/core/compile/backend_compile_duration"],
        "trace_s": round(spent["/jax/core/compile/jaxpr_trace_duration"], 1),
        "xla_cache": "empty at start" if cache_dir == fresh_cache else cache_dir or "off",
        "drop_programs": drop_programs_between_stages(),  # in effect: asked and cached
        "programs_loaded_from_cache": counts["/jax/compilation_cache/cache_retrieval_time_sec"],
        "cache_load_s": round(spent["/jax/compilation_cache/cache_retrieval_time_sec"], 1),
        "compile_share_of_wall": round(
            spent["/jax/core/compile/backend_compile_duration"] / wall, 3),
        "stages": {k: round(v, 1) for k, v in stages.items()},
        "stage_peak_rss_bytes": stage_peaks,
        "stage_largest_program": programs.per_stage(list(records)),
        "stage_compile": programs.compile_per_stage(list(records)),
        "memory_budget": memory_budget(cfg, TINY if args.tiny else SMOLLM2),
        "accuracy": {k: v for k, v in graph.headline_metrics(records).items()
                     if k.startswith("acc_")},
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "host": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": load_average(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_mode": cpu_mode_in_effect(),
        "malloc": args.malloc, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "code": code,
        "stage_digests": {name: r["output_digest"] for name, r in records.items()},
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc[args.key or f"{args.task}-{args.rows}/{jax.default_backend()}"] = result
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
