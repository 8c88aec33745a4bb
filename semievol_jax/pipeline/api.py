"""What the CLI calls: build the stage list from a RunConfig, run it, ablate, verify."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from semievol_jax.config import load_config, to_yaml
from semievol_jax.errors import UserError
from semievol_jax.pipeline import stages as st
from semievol_jax.pipeline.config import ABLATIONS, RunConfig, with_ablation
from semievol_jax.pipeline.runner import MANIFEST, Runner, Stage, read_record, run_manifests

ORDER = {name: i for i, name in enumerate(
    ("data", "base", "sft", "index", "propose", "select", "final", "eval"))}


def _stage(name: str, fn, config, reads: tuple[str, ...] = (), **kw: Any) -> Stage:
    """A stage whose extra arguments (all but the mesh) are hashed with its config."""
    salt = {k: v for k, v in kw.items() if k != "mesh"} or None
    return Stage(name, functools.partial(fn, **kw) if kw else fn, config, reads=reads,
                 order=ORDER[name], salt=salt)


def build_stages(cfg: RunConfig, mesh) -> list[Stage]:
    """The pipeline of one round as Stage objects (see stages.py for what each writes)."""
    if cfg.rounds != 1:
        raise UserError("rounds > 1 is not supported yet (tracked in the pipeline issue)")
    common = {"base_cfg": cfg.base, "task": st.task_of(cfg.data), "mesh": mesh}
    seeded = {**common, "seed": cfg.seed}
    return [
        _stage("data", st.run_data, cfg.data),
        _stage("base", st.run_base, cfg.base, ("data",), seed=cfg.base_seed),
        _stage("sft", st.run_sft, cfg.sft, ("data", "base"), **seeded),
        _stage("index", st.run_index, cfg.index, ("data", "base", "sft"), **common),
        _stage("propose", st.run_propose, cfg.propose, ("data", "base", "sft", "index"),
               **seeded),
        _stage("select", st.run_select, cfg.select, ("data", "base", "sft", "propose"),
               **seeded),
        _stage("final", st.run_final, cfg.final, ("data", "base", "sft", "select"),
               sft_cfg=cfg.sft, **seeded),
        _stage("eval", st.run_eval, cfg.eval, ("data", "base", "sft", "select", "final"),
               thetas=tuple(cfg.select.sweep_thetas), select_cfg=cfg.select, **seeded),
    ]


def make_mesh(cfg: RunConfig):
    from semievol_jax import sharding

    sharding.initialize_runtime(cfg.mesh)
    return sharding.make_mesh(cfg.mesh)


def run_pipeline(cfg: RunConfig, run_dir: Path, *, mesh=None,
                 shared: dict[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """Run (or resume) one pipeline into `run_dir`; `shared` stages are adopted, not rerun."""
    from semievol_jax import sharding

    mesh = mesh if mesh is not None else make_mesh(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    runner = Runner(run_dir, is_writer=sharding.is_main_process())
    stages = build_stages(cfg, mesh)
    for name, d in (shared or {}).items():
        runner.adopt(name, d)
    return runner.run([s for s in stages if s.name not in (shared or {})])


def ablation_runs(cfg: RunConfig, run_dir: Path, *, mesh) -> dict[str, dict[str, Any]]:
    """The full method plus each "without X" row; variants adopt the shared stages."""
    records = {"semievol": run_pipeline(cfg, run_dir, mesh=mesh)}
    shared = {n: run_dir / f"{ORDER[n]:02d}_{n}" for n in ("data", "base")}
    for ab in ABLATIONS:
        variant = with_ablation(cfg, ab)
        share = dict(shared)
        if variant.sft == cfg.sft:
            share["sft"] = run_dir / f"{ORDER['sft']:02d}_sft"
        records[ab] = run_pipeline(variant, run_dir / "ablations" / ab, mesh=mesh, shared=share)
    return records


def accuracy_table(records: dict[str, dict[str, Any]]) -> str:
    rows = ["| variant | vanilla | SFT | SemiEvol |", "|---|---|---|---|"]
    for name, rec in records.items():
        m = rec["eval"]["metrics"]
        rows.append(f"| {name} | {m['acc_vanilla']:.3f} | {m['acc_sft']:.3f} | "
                    f"{m['acc_semievol']:.3f} |")
    return "\n".join(rows)


def run_from_cli(preset: str, overrides: list[str], *, run_dir: str | None,
                 ablate: bool) -> int:
    cfg = load_config(RunConfig, preset, overrides)
    out = Path(run_dir or Path("results") / cfg.name)
    mesh = make_mesh(cfg)
    if ablate:
        records = ablation_runs(cfg, out, mesh=mesh)
        table = accuracy_table(records)
        (out / "ablations.md").write_text(table + "\n")
    else:
        table = accuracy_table({"semievol": run_pipeline(cfg, out, mesh=mesh)})
    print(table)
    return 0


def compare_manifests(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Lines naming every stage whose digest differs, in pipeline order."""
    diffs = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            diffs.append(f"{name}: missing in the fresh run")
        elif have["output_digest"] != want["output_digest"]:
            diffs.append(f"{name}: {want['output_digest'][:12]} != {have['output_digest'][:12]}")
    return diffs


def verify(run_dir: Path, *, rerun: bool = True, fresh: str | None = None) -> int:
    """Check a run's files against their records, then rerun and compare every digest."""
    from semievol_jax.pipeline.runner import digest_dir

    run_dir = Path(run_dir)
    manifests = run_manifests(run_dir)
    if not manifests:
        raise UserError(f"{run_dir}: no {MANIFEST} found")
    bad = []
    for mf in manifests:
        for name, entry in json.loads(mf.read_text()).items():
            d = (mf.parent / entry["dir"]).resolve()
            rec = read_record(d)
            if rec is None or digest_dir(d) != rec["outputs"] or \
                    rec["output_digest"] != entry["output_digest"]:
                bad.append(f"{mf.parent.relative_to(run_dir)}/{name}: files differ from record")
    if bad:
        print("\n".join(bad))
        return 1
    print(f"{len(manifests)} manifest(s): every stage's files match their records")
    if not rerun and fresh is None:
        return 0
    if fresh is not None:
        other = Path(fresh)
    else:
        from semievol_jax.demo.driver import rerun_like

        other = Path(tempfile.mkdtemp(prefix="semievol-verify-"))
        rerun_like(run_dir, other)
    diffs = []
    for mf in manifests:
        rel = mf.relative_to(run_dir)
        theirs = other / rel
        if not theirs.exists():
            diffs.append(f"{rel}: not produced by the fresh run")
            continue
        for line in compare_manifests(json.loads(mf.read_text()),
                                      json.loads(theirs.read_text())):
            diffs.append(f"{rel.parent}/{line}")
    if fresh is None:
        shutil.rmtree(other, ignore_errors=True)
    if diffs:
        print("first difference: " + diffs[0])
        print("\n".join(diffs[1:]))
        return 1
    print("fresh run reproduces every digest")
    return 0


def run_demo(out: Path, *, quick: bool, overrides: list[str]) -> int:
    from semievol_jax.demo.driver import run_demo as drive

    return drive(Path(out), quick=quick, overrides=overrides)
