"""A run and its variants (the ablation rows, a sweep) as jobs that share stages.

A variant changes the config of some stage; every stage before the first one it
changes is the main run's, adopted rather than computed again, so a variant costs only
what it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semievol_jax.pipeline import parallel
from semievol_jax.pipeline.config import ABLATIONS, RunConfig, with_ablation
from semievol_jax.pipeline.graph import stage_dir

# Stage -> the config fields it and every stage before it (after the base) read: a
# variant equal to the main run on all of them can adopt the main run's stage.
_UPSTREAM = {"sft": ("sft",), "index": ("sft", "index"),
             "propose": ("sft", "index", "propose"),
             "select": ("sft", "index", "propose", "select")}


def variant_jobs(cfg: RunConfig, out: Path, variants: dict[str, tuple[str, RunConfig]],
                 *, shared: dict[str, Path] | None = None, after: tuple[str, ...] = (),
                 prefix: str = "") -> list[parallel.Job]:
    """The method in `out` (job `prefix + "semievol"`), then each variant in
    `out/<subdir>/<name>` (job `prefix + name`), as jobs for `parallel.run_jobs`.

    A variant adopts the main run's data and base, and every later stage up to the first
    whose config (or an upstream one) it changes, so nothing is computed twice.
    """
    main = prefix + "semievol"
    jobs = [parallel.Job(main, cfg, out, shared, after)]
    share = dict(shared) if shared else {n: stage_dir(out, n) for n in ("data", "base")}
    for name, (subdir, variant) in variants.items():
        sub = dict(share)
        for stage, fields in _UPSTREAM.items():
            if any(getattr(cfg, f) != getattr(variant, f) for f in fields):
                break
            sub[stage] = stage_dir(out, stage)
        jobs.append(parallel.Job(prefix + name, variant, out / subdir / name, sub, (main,)))
    return jobs


def ablation_variants(cfg: RunConfig) -> dict[str, tuple[str, RunConfig]]:
    """The paper's "without X" rows of `cfg`, each in `ablations/<X>`."""
    return {ab: ("ablations", with_ablation(cfg, ab)) for ab in ABLATIONS}


def run_ablations(cfg: RunConfig, run_dir: Path, *, mesh) -> dict[str, dict[str, Any]]:
    """The full method plus each "without X" row, one after another in this process
    (on `mesh` and every core it has: a real model runs on an accelerator)."""
    return parallel.run_jobs(variant_jobs(cfg, run_dir, ablation_variants(cfg)), mesh=mesh)
