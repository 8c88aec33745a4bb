"""What the `semievol` subcommands that run the method do with their parsed arguments
(cli.py parses them).

`run`, `ablate` and `demo` record their arguments in the output directory
(`provenance.json`); `verify` reads that record and makes a fresh run with the same
command (`rerun`), so a results directory of any kind is checked the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

from semievol_jax import sharding
from semievol_jax.config import load_config
from semievol_jax.demo import driver
from semievol_jax.pipeline import graph, provenance, summary, variants, verify
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.study import parse_variants, run_study


def _config_arg(config: str) -> str:
    """A preset name as given; a YAML file as an absolute path (a rerun may start
    elsewhere)."""
    path = Path(config)
    return str(path.resolve()) if path.suffix in (".yaml", ".yml") and path.exists() else config


def run(config: str, overrides: list[str], *, run_dir: str | None = None,
        ablate: bool = False) -> int:
    """`semievol run` (`ablate=True`: `semievol ablate`): the pipeline, and with `ablate`
    its "without X" rows, into `run_dir` (default results/<name>); then the report."""
    cfg = load_config(RunConfig, config, overrides)
    out = Path(run_dir or Path("results") / cfg.name)
    start = time.perf_counter()
    mesh = graph.make_mesh(cfg)
    if sharding.is_main_process():  # one writer, as for the stages' records
        provenance.write_provenance(out, "ablate" if ablate else "run",
                                    {"config": _config_arg(config), "overrides": list(overrides)})
    if ablate:
        records = variants.run_ablations(cfg, out, mesh=mesh)
    else:
        records = {"semievol": graph.run_pipeline(cfg, out, mesh=mesh)}
    summary.write_run_report(out, out, cfg, {cfg.seed: records}, time.perf_counter() - start,
                             title=cfg.name)
    print(summary.accuracy_table(records))
    print(f"report: {out / 'report.md'}")
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
