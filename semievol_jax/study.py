"""`semievol study`: one preset over seeds, with its ablation rows, in worker processes.

Layout of the output directory:
  seed<S>/                 the method for seed S (the first seed makes the data and base
                           stages; the other seeds adopt them)
  seed<S>/ablations/<A>/   "without IWP / ICP / CL / AS" (for the seeds asked)
  seed<S>/<subdir>/<name>/ any further variants the caller adds (the demo's sweep)
  report.md, metrics.json, plots, digests.json (every sub-run's stage digests),
  provenance.json (the command's arguments, the CPU and the worker settings)

Every run goes to one of `workers` single-core processes (pipeline/parallel.py): the
digests depend on the kind of CPU only, not on its core count or on `workers`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from semievol_jax import environment
from semievol_jax.config import load_config
from semievol_jax.errors import UserError
from semievol_jax.files import write_json_atomic
from semievol_jax.pipeline import parallel
from semievol_jax.pipeline.config import ABLATIONS, RunConfig, with_ablation
from semievol_jax.pipeline.graph import stage_dir
from semievol_jax.pipeline.provenance import write_provenance
from semievol_jax.pipeline.runner import DIGESTS, digest_table
from semievol_jax.pipeline.summary import format_summary, write_run_report
from semievol_jax.pipeline.variants import variant_jobs
from semievol_jax.stats import mean_std

Variants = dict[str, tuple[str, RunConfig]]  # name -> (subdirectory, config)


def ablation_variants(cfg: RunConfig) -> Variants:
    """The "without X" rows that differ from `cfg` itself (a preset that already runs
    without demonstrations has no "without ICP" row), each in `ablations/<X>`."""
    rep = dataclasses.replace
    return {ab: ("ablations", v) for ab in ABLATIONS
            if rep(v := with_ablation(cfg, ab), ablation="") != rep(cfg, ablation="")}


def study_jobs(base_cfg: RunConfig, out: Path, seeds: Sequence[int],
               variants_of: Callable[[RunConfig], Variants]) -> list[parallel.Job]:
    """Every run as jobs: the first seed's data and base, each seed's method (the other
    seeds adopt that data and base), then each seed's variants (`variants_of(cfg)`),
    longest first so the last jobs to start are short ones."""
    first = dataclasses.replace(base_cfg, seed=seeds[0])
    root = out / f"seed{seeds[0]}"
    prefix = parallel.Job(f"seed{seeds[0]}/base", first, root, stop_after="base")
    shared = {n: stage_dir(root, n) for n in ("data", "base")}
    mains, rest = [], []
    for seed in seeds:
        cfg = dataclasses.replace(base_cfg, seed=seed)
        main, *variants = variant_jobs(
            cfg, out / f"seed{seed}", variants_of(cfg),
            shared=None if seed == seeds[0] else shared, after=(prefix.name,),
            prefix=f"seed{seed}/")
        mains.append(main)
        rest += variants
    # A variant's cost is mostly its propose stage: n samples of prompts that k
    # demonstrations make (1 + k) times longer. Stable sort: equal costs keep their order.
    rest.sort(key=lambda j: -j.cfg.propose.n * (1 + j.cfg.index.k))
    return [prefix, *mains, *rest]


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Whether SemiEvol beats SFT by more than two standard deviations of the
    seed-to-seed spread, and SFT beats vanilla.

    Both readings of "spread" are computed: the larger of the two methods' own standard
    deviations over seeds (strict), and that of the per-seed paired gap (same seed =
    same SFT model M1, so the gap's spread is what the method itself adds). Standard
    deviations are `stats.mean_std`'s, as in the report's accuracy table; with one seed
    there is none (0 here) and no criterion is met.
    """
    semi, sft, van = (summary[k]["per_seed"] for k in ("semievol", "sft", "vanilla"))
    (semi_mean, semi_std), (sft_mean, sft_std) = mean_std(semi), mean_std(sft)
    van_mean = mean_std(van)[0]
    paired = [a - b for a, b in zip(semi, sft, strict=True)]
    paired_mean, paired_std = mean_std(paired)
    several = len(semi) > 1
    gap = semi_mean - sft_mean
    spread = max(semi_std or 0.0, sft_std or 0.0)
    return {
        "seeds": len(semi), "semievol_mean": semi_mean, "sft_mean": sft_mean,
        "vanilla_mean": van_mean, "gap": gap, "spread_strict": spread,
        "paired_gaps": paired, "paired_gap_std": paired_std or 0.0,
        "met_strict": several and gap > 2 * spread,
        "met_paired": several and paired_mean > 2 * (paired_std or 0.0),
        "sft_beats_vanilla": sft_mean > van_mean,
    }


def headline_markdown(h: dict[str, Any]) -> str:
    def yes(b: bool) -> str:
        return "yes" if b else "**no**"

    return (
        "## Headline\n\n"
        f"Over {h['seeds']} seed(s): SemiEvol {100 * h['semievol_mean']:.1f} vs SFT "
        f"{100 * h['sft_mean']:.1f} (gap {100 * h['gap']:+.1f} points) vs vanilla "
        f"{100 * h['vanilla_mean']:.1f}.\n\n"
        "| criterion | value | met |\n|---|---|---|\n"
        f"| gap > 2 x larger per-method std ({100 * h['spread_strict']:.1f}) | "
        f"{100 * h['gap']:+.1f} | {yes(h['met_strict'])} |\n"
        f"| mean paired gap > 2 x its std ({100 * h['paired_gap_std']:.1f}); per seed "
        f"{', '.join(f'{100 * g:+.0f}' for g in h['paired_gaps'])} | "
        f"{100 * h['gap']:+.1f} | {yes(h['met_paired'])} |\n"
        f"| SFT > vanilla | {100 * h['sft_mean']:.1f} > {100 * h['vanilla_mean']:.1f} | "
        f"{yes(h['sft_beats_vanilla'])} |\n"
    )


def write_outputs(out: Path, cfg: RunConfig, per_seed: dict[int, dict[str, dict[str, Any]]],
                  wall_s: float, title: str) -> dict[str, Any]:
    """report.md, metrics.json (with the headline), plots and digests.json."""
    first = min(per_seed)
    summary = write_run_report(out, out / f"seed{first}", cfg, per_seed, wall_s, title=title)
    # The CPU mode beside the digests: `verify` tells "same mode, other bits" from
    # "another mode" by it.
    write_json_atomic(out / DIGESTS, {**digest_table(out),
                                      environment.CPU_MODE_KEY: environment.cpu_mode_record()})
    head = headline(summary)
    metrics = json.loads((out / "metrics.json").read_text())
    write_json_atomic(out / "metrics.json", {**metrics, "headline": head})
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + headline_markdown(head))
    return summary


def parse_variants(specs: Sequence[str]) -> dict[str, list[str]]:
    """"name:key=value,key=value" strings -> {name: [overrides]}.

    Raises:
      UserError: a spec without a name or an override without "=".
    """
    out = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        overrides = [o for o in rest.split(",") if o]
        if not name or not overrides or any("=" not in o for o in overrides):
            raise UserError(f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
        out[name] = overrides
    return out


def run_study(out: Path, *, preset: str, overrides: Sequence[str] = (),
              seeds: Sequence[int] = (0, 1, 2), ablation_seeds: Sequence[int] | None = None,
              variants: dict[str, list[str]] | None = None,
              extra_variants: Callable[[RunConfig], Variants] | None = None,
              workers: int | None = None, title: str | None = None,
              kind: str = "study", args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `preset` for every seed, its ablations for `ablation_seeds` (default: every
    seed), the named `variants` (overrides on top, first seed only) and
    `extra_variants`, into `out`; finished stages of an earlier run are reused.

    Returns:
      The per-strategy summary (see `pipeline.summary.summarise`).
    """
    start = time.perf_counter()
    workers = parallel.default_workers() if workers is None else workers
    seeds = tuple(seeds)
    ablation_seeds = seeds if ablation_seeds is None else tuple(ablation_seeds)
    base_cfg = load_config(RunConfig, preset, list(overrides))
    variants = dict(variants or {})
    named = {name: load_config(RunConfig, preset, [*overrides, *more])
             for name, more in variants.items()}
    # The workers and malloc settings: what the wall time depends on besides the CPU
    # (the digests depend on neither).
    write_provenance(out, kind, args if args is not None else {
        "config": preset, "overrides": list(overrides), "seeds": list(seeds),
        "ablation_seeds": list(ablation_seeds), "variants": variants}, workers=workers,
        glibc_tunables=parallel.malloc_tunables(os.environ.get("GLIBC_TUNABLES")))

    def variants_of(cfg: RunConfig) -> Variants:
        out_v = ablation_variants(cfg) if cfg.seed in ablation_seeds else {}
        if cfg.seed == seeds[0]:
            out_v |= {name: ("variants", dataclasses.replace(v, seed=cfg.seed))
                      for name, v in named.items()}
        return out_v | (extra_variants(cfg) if extra_variants else {})

    jobs = study_jobs(base_cfg, out, seeds, variants_of)
    done = parallel.run_jobs(jobs, workers=workers)
    per_seed: dict[int, dict[str, dict[str, Any]]] = {s: {} for s in seeds}
    for job in jobs:
        seed, _, name = job.name.partition("/")
        if job.stop_after is None:
            per_seed[int(seed.removeprefix("seed"))][name] = done[job.name]
    summary = write_outputs(out, base_cfg, per_seed, time.perf_counter() - start,
                            title or base_cfg.name)
    print(format_summary(summary))
    return summary
