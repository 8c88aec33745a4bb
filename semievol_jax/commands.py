"""What the `semievol` subcommands that run the method do with their parsed arguments
(cli.py parses them).

`run`, `ablate` and `demo` record their arguments in the output directory
(`provenance.json`); `verify` reads that record and makes a fresh run with the same
command (`rerun`), so a results directory of any kind is checked the same way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from semievol_jax import sharding
from semievol_jax.config import load_config
from semievol_jax.demo import driver
from semievol_jax.errors import UserError
from semievol_jax.pipeline import graph, preflight, provenance, summary, variants, verify
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.study import parse_variants, run_study


def _config_arg(config: str) -> str:
    """A preset name as given; a YAML file as an absolute path (a rerun may start
    elsewhere)."""
    path = Path(config)
    return str(path.resolve()) if path.suffix in (".yaml", ".yml") and path.exists() else config


def run(config: str, overrides: list[str], *, run_dir: str | None = None,
        ablate: bool = False, until: str | None = None, strict: bool = False) -> int:
    """`semievol run` (`ablate=True`: `semievol ablate`): the pipeline, and with `ablate`
    its "without X" rows, into `run_dir` (default results/<name>); then the report.

    Settings, sources, checkpoint and run directory are checked first (preflight.py);
    `strict` also loads the splits up front, refusing what is otherwise a note. `until`
    stops after that stage of round 1 (no report).
    """
    if until is not None and until not in graph.ORDER:
        raise UserError(f"--until {until}: not a stage; one of {', '.join(graph.ORDER)}")
    cfg = load_config(RunConfig, config, overrides)
    out = Path(run_dir or Path("results") / cfg.name)
    pre = preflight.check_run(cfg, out)
    pre.raise_problems()
    for line in pre.notes:
        print(f"note: {line}", file=sys.stderr)
    if strict and (problems := preflight.check_splits(cfg, strict=True)[2]):
        raise preflight.PreflightError(problems)
    start = time.perf_counter()
    mesh = graph.make_mesh(cfg)
    if sharding.is_main_process():  # one writer, as for the stages' records
        provenance.write_provenance(out, "ablate" if ablate else "run",
                                    {"config": _config_arg(config), "overrides": list(overrides)})
    if until is not None:
        records = graph.run_pipeline(cfg, out, mesh=mesh, stop_after=until)
        print(f"stopped after {until}: {', '.join(records)} done in {out}")
        return 0
    if ablate:
        records = variants.run_ablations(cfg, out, mesh=mesh)
    else:
        records = {"semievol": graph.run_pipeline(cfg, out, mesh=mesh)}
    summary.write_run_report(out, out, cfg, {cfg.seed: records}, time.perf_counter() - start,
                             title=cfg.name)
    print(summary.accuracy_table(records))
    print(f"report: {out / 'report.md'}")
    return 0


def validate(config: str, overrides: list[str], *, run_dir: str | None = None,
             strict: bool = False) -> int:
    """`semievol validate`: what `run` checks first, plus the splits loaded as the data
    stage loads them; prints row counts, notes and problems, writes nothing. Returns 0
    (a run would start) or 2."""
    cfg = load_config(RunConfig, config, overrides)
    out = Path(run_dir or Path("results") / cfg.name)
    pre = preflight.check_run(cfg, out)
    splits, rows, problems = None, {}, list(pre.problems)
    if not any(p.startswith("data.task") for p in problems):
        splits, rows, data_problems = preflight.check_splits(cfg, strict=strict)
        # A source found wanting already (not set, not there) is not reported twice.
        said = [f"data.{k}" for k in ("labeled", "unlabeled", "test")
                if any(p.startswith(f"data.{k}") for p in problems)]
        said += [getattr(cfg.data, k[5:]) + ":" for k in said if getattr(cfg.data, k[5:])]
        problems += [p for p in data_problems if not p.startswith(tuple(said))]
    print(f"{cfg.name}: task {cfg.data.task}, base "
          f"{cfg.base.model or 'pretrained here'}, run directory {out}")
    for split, n in rows.items():
        print(f"  {split:<10} {n:>7} rows")
    for line in pre.notes + (splits.notes if splits else []):
        print(f"note: {line}")
    if splits is not None:
        print(splits.leakage.test_line())
    for line in problems:
        print(f"semievol: error: {line}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): a run would stop", file=sys.stderr)
        return 2
    print("ok: a run with these settings would start")
    return 0


def demo(out: str | Path, *, quick: bool, overrides: list[str], workers: int | None = None
         ) -> int:
    """`semievol demo`: the embedded demo into `out` (semievol_jax/demo/driver.py)."""
    return driver.run_demo(Path(out), quick=quick, overrides=overrides, workers=workers)


def study(config: str, overrides: list[str], *, out: str | Path, seeds: list[int],
          ablation_seeds: list[int] | None = None, variants: list[str] = (),
          workers: int | None = None) -> int:
    """`semievol study`: `config` over `seeds` with its ablations and the named
    `variants` ("name:key=value,key=value", first seed only; semievol_jax/study.py)."""
    run_study(Path(out), preset=_config_arg(config), overrides=overrides, seeds=seeds,
              ablation_seeds=ablation_seeds, variants=parse_variants(variants),
              workers=workers)
    return 0


def rerun(prov: provenance.Provenance, out: Path) -> None:
    """Make in `out` a fresh run of the command and arguments `prov` records."""
    if prov.kind == "demo":
        demo(out, quick=prov.args["quick"], overrides=prov.args["overrides"])
    elif prov.kind == "study":
        study(prov.args["config"], prov.args["overrides"], out=out, seeds=prov.args["seeds"],
              ablation_seeds=prov.args["ablation_seeds"],
              variants=[f"{k}:{','.join(v)}" for k, v in prov.args["variants"].items()])
    else:
        run(prov.args["config"], prov.args["overrides"], run_dir=str(out),
            ablate=prov.kind == "ablate")


def check(run_dir: str | Path, *, rerun_it: bool = True, fresh: str | None = None) -> int:
    """`semievol verify`: the files against their records, then (unless `rerun_it` is
    False) a fresh run, or the already-made `fresh` one, against every digest."""
    return verify.verify(Path(run_dir), rerun=rerun if rerun_it else None, fresh=fresh)
