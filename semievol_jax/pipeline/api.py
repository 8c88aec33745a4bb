"""What the CLI calls: build each round's stages from a RunConfig, run every round,
ablate, verify."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from semievol_jax.config import load_config, to_yaml
from semievol_jax.errors import UserError
from semievol_jax.pipeline import parallel
from semievol_jax.pipeline import stages as st
from semievol_jax.pipeline.config import ABLATIONS, RunConfig, with_ablation
from semievol_jax.pipeline.runner import (
    MANIFEST,
    ROUND_PREFIX,
    Runner,
    Stage,
    read_record,
    run_manifests,
    write_text_atomic,
)

ORDER = {name: i for i, name in enumerate(
    ("data", "base", "sft", "index", "propose", "select", "final", "eval"))}
# Round r > 1 lives in run_dir/round<r>/ (ROUND_PREFIX); round 1 in run_dir itself.
# What a later round's base stage reads: the previous round's stages it rebuilds M2 from,
# adopted under these names (their output digests chain the rounds' records).
PREVIOUS = {"prev_base": "base", "prev_sft": "sft", "prev_final": "final"}


def _stage(name: str, fn, config, reads: tuple[str, ...] = (), **kw: Any) -> Stage:
    """A stage whose extra arguments (all but the mesh) are hashed with its config."""
    salt = {k: v for k, v in kw.items() if k != "mesh"} or None
    return Stage(name, functools.partial(fn, **kw) if kw else fn, config, reads=reads,
                 order=ORDER[name], salt=salt)


def round_dir(run_dir: Path, round_index: int) -> Path:
    """Where round `round_index` (1-based) writes its stages."""
    return Path(run_dir) if round_index == 1 else Path(run_dir) / f"{ROUND_PREFIX}{round_index}"


def round_seed(seed: int, round_index: int) -> int:
    """The root seed of one round: `seed` itself in round 1 (so a one-round run is
    unchanged), a named derivation after it, so rounds sample different continuations."""
    if round_index == 1:
        return seed
    from semievol_jax import rng

    return int(rng.numpy_rng(seed, ROUND_PREFIX, round_index).integers(2**31 - 1))


def build_stages(cfg: RunConfig, mesh, round_index: int = 1) -> list[Stage]:
    """One round of the pipeline as Stage objects (see stages.py for what each writes).

    Round 1 is data -> base -> ... -> eval. A later round has no data stage and its base
    is the previous round's M2: its runner must first adopt round 1's `data` and `base`
    (as `vanilla`, which eval reports) and the previous round's stages named in PREVIOUS.
    """
    if cfg.rounds < 1:
        raise UserError(f"rounds must be at least 1, got {cfg.rounds}")
    if not 1 <= round_index <= cfg.rounds:
        raise ValueError(f"round {round_index} is outside 1..{cfg.rounds}")
    common = {"base_cfg": cfg.base, "task": st.task_of(cfg.data), "mesh": mesh}
    seeded = {**common, "seed": round_seed(cfg.seed, round_index)}
    if round_index == 1:
        head = [_stage("data", st.run_data, cfg.data),
                _stage("base", st.run_base, cfg.base, ("data",), seed=cfg.base_seed,
                       task=common["task"])]
    else:
        head = [_stage("base", st.run_round_base, cfg.base, tuple(PREVIOUS), mesh=mesh)]
    vanilla = ("vanilla",) if round_index > 1 else ()
    return head + [
        _stage("sft", st.run_sft, cfg.sft, ("data", "base"), **seeded),
        _stage("index", st.run_index, cfg.index, ("data", "base", "sft"), **common),
        _stage("propose", st.run_propose, cfg.propose, ("data", "base", "sft", "index"),
               **seeded),
        _stage("select", st.run_select, cfg.select, ("data", "base", "sft", "propose"),
               **seeded),
        _stage("final", st.run_final, cfg.final, ("data", "base", "sft", "select"),
               sft_cfg=cfg.sft, **seeded),
        _stage("eval", st.run_eval, cfg.eval,
               ("data", "base", "sft", "select", "final", *vanilla),
               thetas=tuple(cfg.select.sweep_thetas), select_cfg=cfg.select, **seeded),
    ]


def make_mesh(cfg: RunConfig):
    from semievol_jax import sharding

    sharding.initialize_runtime(cfg.mesh)
    return sharding.make_mesh(cfg.mesh)


def run_pipeline(cfg: RunConfig, run_dir: Path, *, mesh=None,
                 shared: dict[str, Path] | None = None,
                 stop_after: str | None = None) -> dict[str, dict[str, Any]]:
    """Run (or resume) every round of one pipeline into `run_dir`.

    `shared` stages are adopted into round 1, not rerun. `stop_after` runs round 1 only
    up to that stage (a prefix that other runs adopt). Returns stage name -> record for
    round 1 (as for a one-round run) and `round<r>/<stage>` -> record for each later
    round's own stages.
    """
    from semievol_jax import sharding

    mesh = mesh if mesh is not None else make_mesh(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if sharding.is_main_process():  # one writer, as for the stages' records
        write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    first = Runner(run_dir, is_writer=sharding.is_main_process())
    stages = build_stages(cfg, mesh)
    for name, d in (shared or {}).items():
        first.adopt(name, d)
    if stop_after is not None:
        stages = stages[:[s.name for s in stages].index(stop_after) + 1]
    records = first.run([s for s in stages if s.name not in (shared or {})])
    if stop_after is not None:
        return records
    prev = first
    for r in range(2, cfg.rounds + 1):
        runner = Runner(round_dir(run_dir, r), is_writer=sharding.is_main_process())
        runner.adopt("data", first.dirs["data"])
        runner.adopt("vanilla", first.dirs["base"])
        for name, stage in PREVIOUS.items():
            runner.adopt(name, prev.dirs[stage])
        own = build_stages(cfg, mesh, r)
        done = runner.run(own)
        records |= {f"{ROUND_PREFIX}{r}/{s.name}": done[s.name] for s in own}
        prev = runner
    return records


def records_by_round(records: dict[str, dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """{round: {stage: record}} from what run_pipeline returned (round 1 first)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for key, rec in records.items():
        prefix, _, name = key.rpartition("/")
        r = int(prefix.removeprefix(ROUND_PREFIX)) if prefix else 1
        out.setdefault(r, {})[name] = rec
    return dict(sorted(out.items()))


def headline_metrics(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Eval metrics of a run: vanilla and SFT from round 1 (the baselines), SemiEvol
    after the last round (== round 1's eval metrics for a one-round run)."""
    rounds = records_by_round(records)
    first, last = rounds[min(rounds)]["eval"], rounds[max(rounds)]["eval"]
    return {**first["metrics"], "acc_semievol": last["metrics"]["acc_semievol"]}


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
    share = dict(shared) if shared else {n: out / f"{ORDER[n]:02d}_{n}" for n in ("data", "base")}
    for name, (subdir, variant) in variants.items():
        sub = dict(share)
        for stage, fields in _UPSTREAM.items():
            if any(getattr(cfg, f) != getattr(variant, f) for f in fields):
                break
            sub[stage] = out / f"{ORDER[stage]:02d}_{stage}"
        jobs.append(parallel.Job(prefix + name, variant, out / subdir / name, sub, (main,)))
    return jobs


def run_with_variants(cfg: RunConfig, out: Path, variants: dict[str, tuple[str, RunConfig]],
                      *, mesh, shared: dict[str, Path] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """`variant_jobs`, run one after another here."""
    return parallel.run_jobs(variant_jobs(cfg, out, variants, shared=shared), mesh=mesh)


def ablation_runs(cfg: RunConfig, run_dir: Path, *, mesh) -> dict[str, dict[str, Any]]:
    """The full method plus each "without X" row (the paper's ablation table)."""
    return run_with_variants(cfg, run_dir, {ab: ("ablations", with_ablation(cfg, ab))
                                            for ab in ABLATIONS}, mesh=mesh)


def accuracy_table(records: dict[str, dict[str, Any]]) -> str:
    rows = ["| variant | vanilla | SFT | SemiEvol |", "|---|---|---|---|"]
    for name, rec in records.items():
        m = headline_metrics(rec)
        rows.append(f"| {name} | {m['acc_vanilla']:.3f} | {m['acc_sft']:.3f} | "
                    f"{m['acc_semievol']:.3f} |")
    return "\n".join(rows)


def summarise(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Test accuracy per strategy (vanilla, sft, semievol, ablations...) over seeds."""
    import numpy as np

    acc: dict[str, list[float]] = {}
    for records in per_seed.values():
        main = headline_metrics(records["semievol"])
        acc.setdefault("vanilla", []).append(main["acc_vanilla"])
        acc.setdefault("sft", []).append(main["acc_sft"])
        for name, rec in records.items():
            acc.setdefault(name, []).append(headline_metrics(rec)["acc_semievol"])
    return {k: {"per_seed": v, "mean": float(np.mean(v)), "std": float(np.std(v))}
            for k, v in acc.items()}


def _score_from_json(d: dict[str, Any]):
    """PseudoLabelScore back from eval.json (JSON made its float θ keys strings)."""
    from semievol_jax.pipeline.selection import PseudoLabelScore

    per_theta = ("accuracy_per_theta", "selected_fraction_per_theta")
    return PseudoLabelScore(**{k: ({float(t): x for t, x in v.items()} if k in per_theta else v)
                               for k, v in d.items()})


def write_run_report(out: Path, main_run: Path, cfg: RunConfig,
                     per_seed: dict[int, dict[str, dict[str, Any]]], wall_s: float, *,
                     title: str) -> dict[str, Any]:
    """report.md + metrics.json + plots in `out` from finished runs' records."""
    import dataclasses

    from semievol_jax import environment
    from semievol_jax.pipeline import report, selection

    summary = summarise(per_seed)
    pseudo, evals = {}, {}
    for r in range(1, cfg.rounds + 1):
        d = round_dir(main_run, r)
        sel = selection.Selection.from_dict(json.loads(
            (d / "05_select" / "selection.json").read_text()))
        evals[r] = json.loads((d / "07_eval" / "eval.json").read_text())
        pseudo[r] = report.pseudo_label_stats(sel, _score_from_json(evals[r]["pseudo_labels"]))
    # Entropies of the headline models: the baselines from round 1, SemiEvol's last M2.
    entropies = {k: v["entropies"] for k, v in evals[1]["models"].items()}
    entropies["semievol"] = evals[cfg.rounds]["models"]["semievol"]["entropies"]
    stage_s = stage_seconds(per_seed)
    info = environment.describe()
    report.write_report(report.ReportInputs(
        run_name=title,
        accuracy={k: {cfg.data.task: v["per_seed"]} for k, v in summary.items()},
        pseudo_labels=pseudo,
        entropies=entropies,
        accuracy_per_round=accuracy_per_round(per_seed) if cfg.rounds > 1 else {},
        config=json.loads(json.dumps(dataclasses.asdict(cfg))),
        versions=info["packages"],
        device={"backend": info["jax_backend"], "devices": info["devices"],
                "cpu": environment.cpu_kind(info["cpu"])},
        stage_seconds=stage_s,
        notes=[f"seeds: {sorted(per_seed)}; wall time of this invocation {wall_s:.0f}s "
               "(stages reused from an earlier invocation count their original time)"],
    ), out)
    return summary


def stage_seconds(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Seconds per stage of the method, summed over seeds. A stage the seeds share (the
    demo's data and base, adopted: the same record key) ran once and counts once; stages
    run per seed count each time, even when their outputs happen to be equal."""
    out: dict[str, float] = {}
    seen = set()
    for records in per_seed.values():
        for name, rec in records["semievol"].items():
            if rec["key"] not in seen:
                seen.add(rec["key"])
                out[name] = out.get(name, 0.0) + rec["wall_s"]
    return out


def accuracy_per_round(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """Strategy -> test accuracy after each round (mean over seeds) of the main method.

    Vanilla is the original base in every round; SFT is that round's M1 (the previous
    round's M2 tuned on the labeled set); SemiEvol is that round's M2.
    """
    import numpy as np

    per_round: dict[str, list[list[float]]] = {}
    for records in per_seed.values():
        for r, stages in records_by_round(records["semievol"]).items():
            for k in ("vanilla", "sft", "semievol"):
                rows = per_round.setdefault(k, [])
                rows.extend([] for _ in range(r - len(rows)))
                rows[r - 1].append(stages["eval"]["metrics"][f"acc_{k}"])
    return {k: [float(np.mean(x)) for x in rows] for k, rows in per_round.items()}


def run_from_cli(preset: str, overrides: list[str], *, run_dir: str | None,
                 ablate: bool) -> int:
    cfg = load_config(RunConfig, preset, overrides)
    out = Path(run_dir or Path("results") / cfg.name)
    import time

    start = time.perf_counter()
    mesh = make_mesh(cfg)
    if ablate:
        records = ablation_runs(cfg, out, mesh=mesh)
    else:
        records = {"semievol": run_pipeline(cfg, out, mesh=mesh)}
    write_run_report(out, out, cfg, {cfg.seed: records}, time.perf_counter() - start,
                     title=cfg.name)
    print(accuracy_table(records))
    print(f"report: {out / 'report.md'}")
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


def _digest_table(run_dir: Path) -> dict[str, dict[str, str]]:
    """{sub-run: {stage: digest}} from the run's manifests, or a committed digests.json."""
    manifests = run_manifests(run_dir)
    if manifests:
        return {str(mf.parent.relative_to(run_dir)): {
            k: v["output_digest"] for k, v in json.loads(mf.read_text()).items()}
            for mf in manifests}
    committed = run_dir / "digests.json"
    if committed.exists():
        return json.loads(committed.read_text())
    raise UserError(f"{run_dir}: no {MANIFEST} and no digests.json found")


def verify(run_dir: Path, *, rerun: bool = True, fresh: str | None = None) -> int:
    """Check a run's files against their records, then rerun and compare every digest.

    Works on a full run directory, or on a committed summary holding only digests.json
    (a committed demo summary): then only the rerun comparison applies.
    """
    from semievol_jax.pipeline.runner import digest_dir

    run_dir = Path(run_dir)
    expected = _digest_table(run_dir)
    bad = []
    for mf in run_manifests(run_dir):
        for name, entry in json.loads(mf.read_text()).items():
            d = (mf.parent / entry["dir"]).resolve()
            rec = read_record(d)
            if rec is None or digest_dir(d) != rec["outputs"] or \
                    rec["output_digest"] != entry["output_digest"]:
                bad.append(f"{mf.parent.relative_to(run_dir)}/{name}: files differ from record")
    if bad:
        print("\n".join(bad))
        return 1
    print(f"{len(expected)} run(s): every stage on disk matches its record")
    if not rerun and fresh is None:
        return 0
    if fresh is not None:
        other = Path(fresh)
    else:
        from semievol_jax.demo.driver import rerun_like

        if said := hardware_note(run_dir):  # before a rerun that may take a while
            print(said)
        other = Path(tempfile.mkdtemp(prefix="semievol-verify-"))
        rerun_like(run_dir, other)
    got = _digest_table(other)
    diffs = []
    for sub, stages in expected.items():
        for line in compare_manifests({k: {"output_digest": v} for k, v in stages.items()},
                                      {k: {"output_digest": v}
                                       for k, v in got.get(sub, {}).items()}):
            diffs.append(f"{sub}/{line}")
    if fresh is None:
        shutil.rmtree(other, ignore_errors=True)
    if diffs:
        print("first difference: " + diffs[0])
        print("\n".join(diffs[1:]))
        if fresh is not None and (note := hardware_note(run_dir, other)):
            print(note)
        return 1
    print("fresh run reproduces every digest")
    return 0


def recorded_cpu(run_dir: Path) -> str | None:
    """The CPU kind a run directory says it was made on (`demo.json` of a demo, else the
    report's metrics.json), or None when it records none."""
    from semievol_jax import environment
    from semievol_jax.demo.driver import DEMO_MARKER

    for name, get in ((DEMO_MARKER, lambda d: d.get("cpu")),
                      ("metrics.json", lambda d: d.get("device", {}).get("cpu"))):
        path = Path(run_dir) / name
        if path.exists() and (cpu := get(json.loads(path.read_text()))):
            return environment.cpu_kind(cpu) if isinstance(cpu, dict) else str(cpu)
    return None


def hardware_note(expected: Path, got: Path | None = None) -> str | None:
    """Why digests may differ between two runs: they were made on different CPU kinds
    (XLA compiles CPU programs for the host's vector units, so float rounding differs),
    or the expected run does not say which. `got` None (or recording nothing) stands for
    this machine. None when both name the same kind."""
    from semievol_jax import environment

    want = recorded_cpu(expected)
    have = (recorded_cpu(got) if got is not None else None) or \
        environment.cpu_kind(environment.cpu_info())
    why = ("XLA compiles CPU programs for the host's vector units, so digests reproduce "
           "only on the same kind of CPU")
    if want is None:
        return f"note: {expected} does not record its CPU; this rerun ran on {have} ({why})"
    if want != have:
        return f"note: {expected} was made on {want}, the rerun on {have} ({why})"
    return None


def run_demo(out: Path, *, quick: bool, overrides: list[str], workers: int | None = None) -> int:
    from semievol_jax.demo.driver import run_demo as drive

    return drive(Path(out), quick=quick, overrides=overrides, workers=workers)
