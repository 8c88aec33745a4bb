"""`semievol demo`: the whole method, its ablations and a small n / θ sweep, over seeds.

Layout of the output directory (results/demo by default):
  seed<S>/                 the full pipeline for seed S (seed 0 makes the shared
                           data and base stages; the other seeds adopt them)
  seed<S>/ablations/<A>/   "without IWP / ICP / CL / AS"
  seed<S>/sweep/<name>/    n collaborators and θ variants
  report.md, metrics.json, plots/*.png, digests.json (every sub-run's stage digests)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from semievol_jax import environment
from semievol_jax.config import load_config
from semievol_jax.pipeline import api, parallel
from semievol_jax.pipeline.config import ABLATIONS, RunConfig, with_ablation
from semievol_jax.pipeline.runner import run_manifests, write_json_atomic

SEEDS = (0, 1, 2)
SWEEP_N = (2, 8)  # collaborators, besides the preset's n (first seed only: time budget)
SWEEP_THETA = (0.1, 1.0)  # θ, besides the preset's θ (first seed only)
ICP_K = 3  # demonstrations of the "with ICP" row when the preset itself runs without
DEMO_MARKER = "demo.json"  # says how the directory was made (for `semievol verify`)
DIGESTS = "digests.json"  # every sub-run's stage digests in one file


def sweep_variants(cfg: RunConfig) -> dict[str, RunConfig]:
    """The n and θ sweep as named config variants of `cfg`."""
    rep = dataclasses.replace
    out = {f"n{n}": rep(cfg, propose=rep(cfg.propose, n=n)) for n in SWEEP_N}
    out |= {f"theta{t}": rep(cfg, select=rep(cfg.select, theta=t)) for t in SWEEP_THETA}
    return out


def ablation_variants(cfg: RunConfig) -> dict[str, RunConfig]:
    """The "without X" rows that differ from `cfg` itself, plus "with ICP" when `cfg`
    runs without demonstrations (the demo preset: its tiny base has no in-context
    learning, docs/demo.md), so the table still shows what ICP does."""
    rep = dataclasses.replace
    out = {ab: v for ab in ABLATIONS
           if rep(v := with_ablation(cfg, ab), ablation="") != rep(cfg, ablation="")}
    if cfg.index.k == 0:
        out["with_icp"] = rep(cfg, index=rep(cfg.index, k=ICP_K))
    return out


def seed_variants(cfg: RunConfig, *, sweep: bool) -> dict[str, tuple[str, RunConfig]]:
    """Seed `cfg.seed`'s variants: the ablations and (optionally) the sweep."""
    variants = {ab: ("ablations", v) for ab, v in ablation_variants(cfg).items()}
    if sweep:
        variants |= {name: ("sweep", v) for name, v in sweep_variants(cfg).items()}
    return variants


def demo_jobs(base_cfg: RunConfig, out: Path, seeds: tuple[int, ...], *, sweep: bool
              ) -> list[parallel.Job]:
    """Every run of the demo as jobs: the first seed's data and base, each seed's method
    (the other seeds adopt that data and base), then each seed's variants."""
    first = dataclasses.replace(base_cfg, seed=seeds[0])
    root = out / f"seed{seeds[0]}"
    prefix = parallel.Job(f"seed{seeds[0]}/base", first, root, stop_after="base")
    shared = {n: root / f"{api.ORDER[n]:02d}_{n}" for n in ("data", "base")}
    mains, rest = [], []
    for seed in seeds:
        cfg = dataclasses.replace(base_cfg, seed=seed)
        main, *variants = api.variant_jobs(
            cfg, out / f"seed{seed}", seed_variants(cfg, sweep=sweep and seed == seeds[0]),
            shared=None if seed == seeds[0] else shared, after=(prefix.name,),
            prefix=f"seed{seed}/")
        mains.append(main)
        rest += variants
    # Longest first, so the last jobs to start are short ones and neither worker sits idle
    # while the other finishes a long one. A variant's cost is mostly its propose stage:
    # n samples of prompts that k demonstrations make (1 + k) times longer. Stable sort:
    # equal costs keep their order.
    rest.sort(key=lambda j: -j.cfg.propose.n * (1 + j.cfg.index.k))
    return [prefix, *mains, *rest]


def write_outputs(out: Path, cfg: RunConfig, per_seed: dict[int, dict[str, dict[str, Any]]],
                  wall_s: float) -> dict[str, Any]:
    """report.md, metrics.json, plots and digests.json (every sub-run's stage digests)."""
    summary = api.write_run_report(out, out / "seed0", cfg, per_seed, wall_s,
                                   title="SemiEvol demo (synthetic task, tiny Llama, CPU)")
    manifests = {str(p.parent.relative_to(out)): json.loads(p.read_text())
                 for p in run_manifests(out)}
    write_json_atomic(out / DIGESTS, {k: {s: e["output_digest"] for s, e in v.items()}
                                       for k, v in manifests.items()})
    head = headline(summary)
    metrics = json.loads((out / "metrics.json").read_text())
    write_json_atomic(out / "metrics.json", {**metrics, "headline": head})
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + headline_markdown(head))
    return summary


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The demo's bar: SemiEvol beats SFT by more than two standard deviations of the
    seed-to-seed spread, and SFT beats vanilla.

    Both readings of "spread" are computed: the larger of the two methods' own standard
    deviations over seeds (strict), and that of the per-seed paired gap (same seed =
    same SFT model M1, so the gap's spread is what the method itself adds). Standard
    deviations are over seeds with ddof=1, as in the report's accuracy table.
    """
    import numpy as np

    semi = np.asarray(summary["semievol"]["per_seed"])
    sft = np.asarray(summary["sft"]["per_seed"])
    van = np.asarray(summary["vanilla"]["per_seed"])
    gap = float(semi.mean() - sft.mean())
    ddof = 1 if len(semi) > 1 else 0
    spread = float(max(semi.std(ddof=ddof), sft.std(ddof=ddof)))
    paired = semi - sft
    return {
        "seeds": len(semi), "semievol_mean": float(semi.mean()), "sft_mean": float(sft.mean()),
        "vanilla_mean": float(van.mean()), "gap": gap, "spread_strict": spread,
        "paired_gaps": paired.tolist(), "paired_gap_std": float(paired.std(ddof=ddof)),
        "met_strict": bool(len(semi) > 1 and gap > 2 * spread),
        "met_paired": bool(len(semi) > 1 and paired.mean() > 2 * paired.std(ddof=ddof)),
        "sft_beats_vanilla": bool(sft.mean() > van.mean()),
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


def run_demo(out: Path, *, quick: bool = False, overrides: list[str] = (),
             workers: int | None = None) -> int:
    """Run the demo into `out`; finished stages of an earlier run are reused.

    Every run goes to one of `workers` single-core processes (default
    `parallel.default_workers()`; `semievol_jax.pipeline.parallel`): the digests depend on
    the kind of CPU only, not on its core count or on `workers`.
    """
    start = time.perf_counter()
    workers = parallel.default_workers() if workers is None else workers
    seeds = SEEDS[:1] if quick else SEEDS
    base_cfg = load_config(RunConfig, "demo", list(overrides))
    out.mkdir(parents=True, exist_ok=True)
    # What the wall time depends on besides the CPU (the digests depend on neither).
    write_json_atomic(out / DEMO_MARKER, {
        "quick": quick, "overrides": list(overrides), "cpu": environment.cpu_info(),
        "workers": workers, "glibc_tunables": parallel.malloc_tunables(
            os.environ.get("GLIBC_TUNABLES"))})
    jobs = demo_jobs(base_cfg, out, seeds, sweep=not quick)
    done = parallel.run_jobs(jobs, workers=workers)
    per_seed: dict[int, dict[str, dict[str, Any]]] = {s: {} for s in seeds}
    for job in jobs:
        seed, _, name = job.name.partition("/")
        if job.stop_after is None:
            per_seed[int(seed.removeprefix("seed"))][name] = done[job.name]
    summary = write_outputs(out, base_cfg, per_seed, time.perf_counter() - start)
    for name, s in summary.items():
        print(f"{name:<12} {s['mean']:.3f} ± {s['std']:.3f}  {s['per_seed']}")
    return 0


def rerun_like(run_dir: Path, other: Path) -> None:
    """Make a fresh run of the same kind as `run_dir` in `other` (for `semievol verify`)."""
    marker = run_dir / DEMO_MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        run_demo(other, quick=info["quick"], overrides=info["overrides"])
        return
    cfg = load_config(RunConfig, str(run_dir / "config.yaml"))
    api.run_pipeline(cfg, other)
