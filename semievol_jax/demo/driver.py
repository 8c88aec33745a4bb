"""`semievol demo`: the whole method, its ablations and a small n / θ sweep, over seeds.

A study (semievol_jax/study.py) of the demo preset: its layout, plus
  seed<first>/sweep/<name>/    n collaborators and θ variants
and, since the preset runs without demonstrations, a "with ICP" row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from semievol_jax.pipeline import parallel
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.study import Variants, run_study

SEEDS = (0, 1, 2)
SWEEP_N = (2, 8)  # collaborators, besides the preset's n (first seed only: time budget)
SWEEP_THETA = (0.1, 1.0)  # θ, besides the preset's θ (first seed only)
ICP_K = 3  # demonstrations of the "with ICP" row when the preset itself runs without
TITLE = "SemiEvol demo (synthetic task, tiny Llama, CPU)"


def sweep_variants(cfg: RunConfig) -> dict[str, RunConfig]:
    """The n and θ sweep as named config variants of `cfg`."""
    rep = dataclasses.replace
    out = {f"n{n}": rep(cfg, propose=rep(cfg.propose, n=n)) for n in SWEEP_N}
    out |= {f"theta{t}": rep(cfg, select=rep(cfg.select, theta=t)) for t in SWEEP_THETA}
    return out


def demo_variants(cfg: RunConfig, *, sweep: bool) -> Variants:
    """Besides the ablations: "with ICP" when `cfg` runs without demonstrations (the demo
    preset: its tiny base has no in-context learning, docs/demo.md), so the table still
    shows what ICP does; and (for the first seed) the n / θ sweep."""
    rep = dataclasses.replace
    out: Variants = {}
    if cfg.index.k == 0:
        out["with_icp"] = ("ablations", rep(cfg, index=rep(cfg.index, k=ICP_K)))
    if sweep:
        out |= {name: ("sweep", v) for name, v in sweep_variants(cfg).items()}
    return out


def run_demo(out: Path, *, quick: bool = False, overrides: list[str] = (),
             workers: int | None = None) -> int:
    """Run the demo into `out`; finished stages of an earlier run are reused.

    Every run goes to one of `workers` single-core processes (default
    `parallel.default_workers()`; `semievol_jax.pipeline.parallel`): the digests depend on
    the kind of CPU only, not on its core count or on `workers`.
    """
    seeds = SEEDS[:1] if quick else SEEDS
    run_study(out, preset="demo", overrides=overrides, seeds=seeds,
              extra_variants=lambda cfg: demo_variants(cfg, sweep=not quick
                                                       and cfg.seed == seeds[0]),
              workers=parallel.default_workers() if workers is None else workers,
              title=TITLE, kind="demo", args={"quick": quick, "overrides": list(overrides)})
    return 0
