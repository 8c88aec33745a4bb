"""Finished runs' records, summarised: accuracy per strategy over seeds, per round, stage
times, and the report (report.md, metrics.json, plots) written from them.

`per_seed` below is {seed: {run name: records}}: the records `graph.run_pipeline`
returned for the method ("semievol") and each variant of that seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semievol_jax import environment
from semievol_jax.files import to_jsonable
from semievol_jax.pipeline import report, selection
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.pipeline.graph import headline_metrics, records_by_round, round_dir
from semievol_jax.pipeline.runner import RECORD
from semievol_jax.stats import mean_std

PerSeed = dict[int, dict[str, dict[str, dict[str, Any]]]]


def accuracy_table(records: dict[str, dict[str, Any]]) -> str:
    """Markdown: vanilla / SFT / SemiEvol test accuracy of each run in `records`."""
    rows = ["| variant | vanilla | SFT | SemiEvol |", "|---|---|---|---|"]
    for name, rec in records.items():
        m = headline_metrics(rec)
        rows.append(f"| {name} | {m['acc_vanilla']:.3f} | {m['acc_sft']:.3f} | "
                    f"{m['acc_semievol']:.3f} |")
    return "\n".join(rows)


def summarise(per_seed: PerSeed) -> dict[str, Any]:
    """Test accuracy per strategy (vanilla, sft, semievol, ablations...) over seeds:
    {strategy: {"per_seed", "mean", "std"}}, std as in `stats.mean_std` (None for one
    seed)."""
    acc: dict[str, list[float]] = {}
    for records in per_seed.values():
        main = headline_metrics(records["semievol"])
        acc.setdefault("vanilla", []).append(main["acc_vanilla"])
        acc.setdefault("sft", []).append(main["acc_sft"])
        for name, rec in records.items():
            acc.setdefault(name, []).append(headline_metrics(rec)["acc_semievol"])
    out = {}
    for k, v in acc.items():
        mean, std = mean_std(v)
        out[k] = {"per_seed": v, "mean": mean, "std": std}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """One line per strategy: `name  mean ± std  [per seed]` (fractions)."""
    lines = []
    for name, s in summary.items():
        spread = "" if s["std"] is None else f" ± {s['std']:.3f}"
        lines.append(f"{name:<12} {s['mean']:.3f}{spread}  {s['per_seed']}")
    return "\n".join(lines)


def _score_from_json(d: dict[str, Any]) -> selection.PseudoLabelScore:
    """PseudoLabelScore back from eval.json (JSON made its float θ keys strings)."""
    per_theta = ("accuracy_per_theta", "selected_fraction_per_theta")
    return selection.PseudoLabelScore(
        **{k: ({float(t): x for t, x in v.items()} if k in per_theta else v)
           for k, v in d.items()})


def stage_seconds(per_seed: PerSeed) -> dict[str, float]:
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


def recorded_seconds(root: Path) -> float | None:
    """Seconds of every stage recorded under `root` (a study's seeds, their ablations and
    variants), a stage that several runs share counted once; None when a record lacks
    its time or there is none."""
    walls = {}
    for path in root.rglob(RECORD):
        rec = json.loads(path.read_text())
        walls[rec.get("key", str(path))] = rec.get("wall_s")
    return sum(walls.values()) if walls and None not in walls.values() else None


def accuracy_per_round(per_seed: PerSeed) -> dict[str, list[float]]:
    """Strategy -> test accuracy after each round (mean over seeds) of the main method.

    Vanilla is the original base in every round; SFT is that round's M1 (the previous
    round's M2 tuned on the labeled set); SemiEvol is that round's M2.
    """
    per_round: dict[str, list[list[float]]] = {}
    for records in per_seed.values():
        for r, stages in records_by_round(records["semievol"]).items():
            for k in ("vanilla", "sft", "semievol"):
                rows = per_round.setdefault(k, [])
                rows.extend([] for _ in range(r - len(rows)))
                rows[r - 1].append(stages["eval"]["metrics"][f"acc_{k}"])
    return {k: [mean_std(x)[0] for x in rows] for k, rows in per_round.items()}


def diagnostics(per_seed: PerSeed) -> dict[str, list[float]]:
    """report.DIAGNOSTICS -> per-seed values, from the method's (not the ablations') stage
    records of round 1; a measure a seed did not record (no reflection, k=0) is left out."""
    out: dict[str, list[float]] = {}
    for name in report.DIAGNOSTICS:
        stage, _, metric = name.partition(".")
        values = []
        for variants in per_seed.values():
            rec = variants.get("semievol", {}).get(stage)
            v = (rec or {}).get("metrics", {}).get(metric)
            if isinstance(v, int | float) and v == v:  # not None, not NaN
                values.append(float(v))
        if values:
            out[name] = values
    return out


def write_run_report(out: Path, main_run: Path, cfg: RunConfig, per_seed: PerSeed,
                     wall_s: float, *, title: str) -> dict[str, Any]:
    """report.md + metrics.json + plots in `out` from finished runs' records; returns
    `summarise(per_seed)`."""
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
    info = environment.describe()
    report.write_report(report.ReportInputs(
        run_name=title,
        accuracy={k: {cfg.data.task: v["per_seed"]} for k, v in summary.items()},
        pseudo_labels=pseudo,
        entropies=entropies,
        accuracy_per_round=accuracy_per_round(per_seed) if cfg.rounds > 1 else {},
        config=to_jsonable(cfg),
        versions=info["packages"],
        device={"backend": info["jax_backend"], "devices": info["devices"],
                "cpu": environment.cpu_kind(info["cpu"]),
                environment.CPU_MODE_KEY: info["cpu_mode"], "xla_flags": info["XLA_FLAGS"]},
        stage_seconds=stage_seconds(per_seed),
        diagnostics=diagnostics(per_seed),
        notes=[f"seeds: {sorted(per_seed)}; wall time of this invocation {wall_s:.0f}s "
               "(stages reused from an earlier invocation count their original time)"],
    ), out)
    return summary
