"""The run report: report.md, metrics.json and PNG plots from plain result records.

Inputs are the dataclasses below (no model, no JAX), so the report renders from fake
metrics in tests. Accuracies are fractions in [0, 1] and printed as percentages; a
cell with several seeds shows mean ± sample standard deviation (ddof=1).
Plots use matplotlib's object API with the Agg canvas: no global backend switch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semievol_jax.files import write_text_atomic
from semievol_jax.pipeline.selection import PseudoLabelScore, Selection
from semievol_jax.stats import mean_std

# Row order of the accuracy table; other strategies follow in the order given.
STRATEGY_ORDER = ("vanilla", "sft", "semievol", "no_iwp", "no_icp", "no_cl", "no_as")
STRATEGY_LABELS = {"vanilla": "Vanilla", "sft": "SFT", "semievol": "SemiEvol",
                   "no_iwp": "w/o IWP", "no_icp": "w/o ICP", "no_cl": "w/o CL",
                   "no_as": "w/o AS"}


@dataclasses.dataclass(frozen=True)
class PseudoLabelStats:
    """Pseudo-label statistics of one round.

    Attributes:
      consistency_rate: fraction of questions whose collaborators agreed.
      selected_fraction: fraction of unlabeled questions kept for final tuning.
      num_questions: unlabeled questions.
      num_selected: pseudo-labels kept.
      accuracy_selected: accuracy of the kept pseudo-labels (None without gold).
      accuracy_per_theta: θ -> accuracy of what AS keeps at θ.
      selected_fraction_per_theta: θ -> fraction kept at θ.
    """

    consistency_rate: float
    selected_fraction: float
    num_questions: int = 0
    num_selected: int = 0
    accuracy_selected: float | None = None
    accuracy_per_theta: Mapping[float, float] = dataclasses.field(default_factory=dict)
    selected_fraction_per_theta: Mapping[float, float] = dataclasses.field(
        default_factory=dict)


def pseudo_label_stats(selection: Selection, score: PseudoLabelScore | None = None
                       ) -> PseudoLabelStats:
    """The report's view of one round's `Selection` (and its gold score, if any)."""
    st = selection.stats
    return PseudoLabelStats(
        consistency_rate=float(st["consistency_rate"]),
        selected_fraction=float(st["selected_fraction"]),
        num_questions=int(st["num_questions"]),
        num_selected=int(st["num_selected"]),
        accuracy_selected=None if score is None else score.accuracy_selected,
        accuracy_per_theta={} if score is None else dict(score.accuracy_per_theta),
        selected_fraction_per_theta={} if score is None
        else dict(score.selected_fraction_per_theta),
    )


# stage metric -> what the report calls it (pipeline/summary.py collects them).
DIAGNOSTICS = {
    "propose.answered_fraction": "proposals whose answer parses",
    "propose.cut_at_budget_fraction": "proposals cut at the token budget",
    "select.consistent_fraction": "questions whose collaborators all agree (consistency)",
    "select.reflection_parse_rate": "reflections whose answer parses",
    "eval.parse_vanilla": "test answers that parse: vanilla",
    "eval.parse_sft": "test answers that parse: SFT",
    "eval.parse_semievol": "test answers that parse: SemiEvol",
    "eval.proposal_accuracy": "proposals that are right (each collaborator's own answer)",
    "eval.majority_accuracy": "majority answers that are right (questions with one)",
    "eval.consistent_accuracy": "consistent pseudo-labels that are right",
    "eval.reflected_accuracy": "reflected pseudo-labels that are right",
    "eval.answered_accuracy": "pseudo-labels that are right, before selection",
    "eval.pseudo_label_accuracy": "selected pseudo-labels that are right",
    "eval.demo_gold_match": "demonstrations whose gold answer equals the question's",
}


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """Everything a report shows.

    Attributes:
      run_name: title.
      accuracy: strategy ("vanilla", "sft", "semievol", "no_cl", ...) -> task ->
        per-seed test accuracies.
      pseudo_labels: round index -> its pseudo-label statistics.
      entropies: strategy -> entropies of its test responses (for the histogram).
      accuracy_per_round: strategy -> test accuracy after each round (round 1 first).
      config: the resolved run config (any JSON-able mapping).
      versions: package -> version.
      device: device description (backend, kind, count, ...).
      stage_seconds: stage name -> wall time in seconds.
      diagnostics: what each step of the method did (`DIAGNOSTICS` names them) -> its
        per-seed values (fractions in [0, 1]).
      notes: free lines appended at the end (warnings, leakage summary, ...).
    """

    run_name: str
    accuracy: Mapping[str, Mapping[str, Sequence[float]]] = dataclasses.field(
        default_factory=dict)
    pseudo_labels: Mapping[int, PseudoLabelStats] = dataclasses.field(default_factory=dict)
    entropies: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)
    accuracy_per_round: Mapping[str, Sequence[float]] = dataclasses.field(
        default_factory=dict)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    device: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stage_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    diagnostics: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)
    notes: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """Paths written by `write_report`."""

    report_md: Path
    metrics_json: Path
    plots: tuple[Path, ...]


def format_accuracy(values: Sequence[float]) -> str:
    """`70.3` for one seed, `70.3 ± 0.4` for several, `-` for none (percent)."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _ordered(strategies: Sequence[str]) -> list[str]:
    known = [s for s in STRATEGY_ORDER if s in strategies]
    return known + [s for s in strategies if s not in STRATEGY_ORDER]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.4g}"


def accuracy_table(accuracy: Mapping[str, Mapping[str, Sequence[float]]]) -> list[str]:
    """Markdown lines: one row per strategy, one column per task."""
    tasks = sorted({t for per_task in accuracy.values() for t in per_task})
    n_seeds = max((len(v) for per in accuracy.values() for v in per.values()), default=0)
    rows = [[STRATEGY_LABELS.get(s, s)] + [format_accuracy(accuracy[s].get(t, ()))
                                            for t in tasks]
            for s in _ordered(list(accuracy))]
    counts = sorted({len(v) for per in accuracy.values() for v in per.values() if v})
    note = ("Test accuracy (%)." if n_seeds <= 1 else
            f"Test accuracy (%), mean ± std over {n_seeds} seeds." if len(counts) == 1 else
            f"Test accuracy (%), mean ± std over the seeds each cell ran ({counts[0]} to "
            f"{counts[-1]}; a cell without ± ran one).")
    return [note, "", *_md_table(["strategy", *tasks], rows)]


def render_markdown(inp: ReportInputs, plots: Sequence[Path] = ()) -> str:
    """The report text (no files written)."""
    lines = [f"# SemiEvol run: {inp.run_name}", ""]
    if inp.accuracy:
        lines += ["## Accuracy", "", *accuracy_table(inp.accuracy), ""]
    if inp.pseudo_labels:
        lines += ["## Pseudo-labels", ""]
        rows = [[str(r), _fmt(p.consistency_rate), _fmt(p.selected_fraction),
                 f"{p.num_selected}/{p.num_questions}", _fmt(p.accuracy_selected)]
                for r, p in sorted(inp.pseudo_labels.items())]
        lines += _md_table(["round", "consistency rate", "selected fraction",
                            "selected", "pseudo-label accuracy"], rows) + [""]
        thetas = sorted({t for p in inp.pseudo_labels.values()
                         for t in p.accuracy_per_theta})
        if thetas:
            lines += ["Pseudo-label accuracy (selected fraction) per θ:", ""]
            rows = [[str(r)] + [f"{_fmt(p.accuracy_per_theta.get(t))} "
                                f"({_fmt(p.selected_fraction_per_theta.get(t))})"
                                for t in thetas]
                    for r, p in sorted(inp.pseudo_labels.items())]
            lines += _md_table(["round", *[f"θ={t:g}" for t in thetas]], rows) + [""]
    if inp.diagnostics:
        rows = [[DIAGNOSTICS.get(k, k), format_accuracy(v)]
                for k, v in inp.diagnostics.items() if v]
        lines += ["## What each step did", "",
                  "Rates (%) of the method's run, mean ± std over seeds.", "",
                  *_md_table(["measure", "value"], rows), ""]
    if inp.accuracy_per_round:
        n = max(len(v) for v in inp.accuracy_per_round.values())
        rows = [[STRATEGY_LABELS.get(s, s)] + [_fmt(v[i]) if i < len(v) else "-"
                                               for i in range(n)]
                for s, v in ((s, inp.accuracy_per_round[s])
                             for s in _ordered(list(inp.accuracy_per_round)))]
        lines += ["## Accuracy per round", "",
                  "Test accuracy after each round: round r's base is round r-1's SemiEvol "
                  "model; SFT is that round's M1; Vanilla is always the original base.", "",
                  *_md_table(["strategy", *[f"round {i + 1}" for i in range(n)]], rows), ""]
    if inp.stage_seconds:
        rows = [[k, f"{v:.1f}"] for k, v in inp.stage_seconds.items()]
        rows.append(["total", f"{sum(inp.stage_seconds.values()):.1f}"])
        lines += ["## Wall time", "", *_md_table(["stage", "seconds"], rows), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if inp.device:
        lines += ["## Device", "", "```", *[f"{k}: {v}" for k, v in inp.device.items()],
                  "```", ""]
    if inp.versions:
        lines += ["## Versions", "", *_md_table(["package", "version"],
                                                [[k, str(v)] for k, v in
                                                 sorted(inp.versions.items())]), ""]
    if inp.config:
        lines += ["## Resolved config", "", "```json",
                  json.dumps(inp.config, indent=2, sort_keys=True, default=str), "```", ""]
    if inp.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in inp.notes], ""]
    return "\n".join(lines)


def metrics_dict(inp: ReportInputs) -> dict[str, Any]:
    """Everything numeric, for machines (written as metrics.json)."""
    acc = {}
    for s, per_task in inp.accuracy.items():
        acc[s] = {}
        for t, vals in per_task.items():
            mean, std = mean_std(vals) if vals else (None, None)
            acc[s][t] = {"values": [float(v) for v in vals], "mean": mean, "std": std}
    pseudo = {str(r): {**dataclasses.asdict(p),
                       "accuracy_per_theta": {str(k): v for k, v in
                                              p.accuracy_per_theta.items()},
                       "selected_fraction_per_theta": {str(k): v for k, v in
                                                       p.selected_fraction_per_theta.items()}}
              for r, p in inp.pseudo_labels.items()}
    return {
        "run_name": inp.run_name,
        "accuracy": acc,
        "pseudo_labels": pseudo,
        "accuracy_per_round": {k: [float(x) for x in v]
                               for k, v in inp.accuracy_per_round.items()},
        "entropy_summary": {k: _summary(v) for k, v in inp.entropies.items()},
        "stage_seconds": dict(inp.stage_seconds),
        "diagnostics": {k: {"values": [float(x) for x in v], "mean": mean_std(v)[0],
                            "std": mean_std(v)[1]} for k, v in inp.diagnostics.items() if v},
        "versions": dict(inp.versions),
        "device": dict(inp.device),
    }


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0, "mean": None, "median": None}
    return {"count": int(arr.size), "mean": float(arr.mean()),
            "median": float(np.median(arr))}


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _new_axes(figsize=(6.0, 4.0)):
    # matplotlib costs a second to import: only when a plot is drawn.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plot_entropies(entropies: Mapping[str, Sequence[float]], out: Path) -> Path:
    """Overlaid histograms of test-response entropy per strategy (paper's Fig. 4)."""
    fig, ax = _new_axes()
    finite = {s: np.asarray(v, dtype=np.float64) for s, v in entropies.items() if len(v)}
    allv = np.concatenate(list(finite.values())) if finite else np.zeros(1)
    bins = np.histogram_bin_edges(allv[np.isfinite(allv)], bins=30)
    for s in _ordered(list(finite)):
        v = finite[s]
        ax.hist(v[np.isfinite(v)], bins=bins, alpha=0.5, label=STRATEGY_LABELS.get(s, s))
    ax.set_xlabel("response entropy (mean -log p per token)")
    ax.set_ylabel("test responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    return out


def plot_theta(pseudo: Mapping[int, PseudoLabelStats], out: Path) -> Path:
    """Pseudo-label accuracy (and kept fraction, dashed) against θ, one line per round."""
    fig, ax = _new_axes()
    for r, p in sorted(pseudo.items()):
        ts = sorted(p.accuracy_per_theta)
        ax.plot(ts, [100 * p.accuracy_per_theta[t] for t in ts], marker="o",
                label=f"round {r} accuracy")
        if p.selected_fraction_per_theta:
            fs = sorted(p.selected_fraction_per_theta)
            ax.plot(fs, [100 * p.selected_fraction_per_theta[t] for t in fs], ls="--",
                    marker=".", label=f"round {r} kept")
    ax.set_xlabel("θ (entropy quantile)")
    ax.set_ylabel("%")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    return out


def plot_rounds(per_round: Mapping[str, Sequence[float]], out: Path) -> Path:
    """Test accuracy after each round, one line per strategy."""
    fig, ax = _new_axes()
    for s in _ordered(list(per_round)):
        v = per_round[s]
        ax.plot(range(1, len(v) + 1), [100 * x for x in v], marker="o",
                label=STRATEGY_LABELS.get(s, s))
    ax.set_xticks(range(1, max((len(v) for v in per_round.values()), default=1) + 1))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    return out


def write_report(inp: ReportInputs, out_dir: str | Path) -> ReportFiles:
    """Writes report.md, metrics.json and the PNGs the inputs have data for.

    Args:
      inp: the results.
      out_dir: e.g. `results/<run>/`; created if missing.

    Returns:
      The written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if any(len(v) for v in inp.entropies.values()):
        plots.append(plot_entropies(inp.entropies, out_dir / "entropy_distributions.png"))
    if any(p.accuracy_per_theta for p in inp.pseudo_labels.values()):
        plots.append(plot_theta(inp.pseudo_labels, out_dir / "pseudo_label_accuracy_vs_theta.png"))
    if inp.accuracy_per_round:
        plots.append(plot_rounds(inp.accuracy_per_round, out_dir / "accuracy_per_round.png"))
    md, js = out_dir / "report.md", out_dir / "metrics.json"
    write_text_atomic(md, render_markdown(inp, plots))
    write_text_atomic(js, json.dumps(_json_safe(metrics_dict(inp)), indent=2, sort_keys=True,
                                 allow_nan=False, default=str) + "\n")
    return ReportFiles(md, js, tuple(plots))
