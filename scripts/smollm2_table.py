"""The paper's table in shape: every task's study of SmolLM2 merged into one report.

Reads `<root>/<task>/metrics.json` (written by `semievol study --config smollm2-<task>
--out <root>/<task>`), writes `<root>/metrics.json` (accuracy[strategy][task] with mean,
std and values, as results/demo/metrics.json) and `<root>/report.md`: the accuracy table,
the per-seed paired gaps, what each step did per task, and the wall time.

Usage:
  python scripts/smollm2_table.py results/smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semievol_jax.pipeline.report import DIAGNOSTICS, accuracy_table  # noqa: E402
from semievol_jax.pipeline.summary import recorded_seconds  # noqa: E402
from semievol_jax.stats import answer_summary, mean_std  # noqa: E402


def _counts(path: Path, key: str, model: str | None = None) -> Counter:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return Counter(r.get(key) for r in rows if model is None or r.get("model") == model)


def _shares(c: Counter) -> str:
    n = sum(c.values())
    return " ".join(f"{k if k is not None else '-'} {100 * v / n:.0f}"
                    for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))) if n else "-"


def rows_per_split(task_dir: Path) -> str:
    """The study's row cap per split, from the overrides its provenance recorded."""
    prov = json.loads((task_dir / "provenance.json").read_text())
    caps = [o.split("=", 1)[1] for o in prov["args"]["overrides"]
            if o.startswith("data.max_rows=")]
    return caps[-1] if caps and caps[-1] != "0" else "all"


def _runs(first: Path) -> list[tuple[str, Path]]:
    """The first seed's ablation and variant runs, by name."""
    return [(f"{sub.name}/{d.name}", d) for sub in (first / "ablations", first / "variants")
            if sub.is_dir() for d in sorted(sub.iterdir())]


def answer_classes(root: Path, tasks: list[str]) -> list[str]:
    """Answer shares (%) of the labeled gold, the selected pseudo-labels and each model's
    test predictions, from each seed's method run and the first seed's ablations and
    variants (the stage directories present):
    a selection that keeps one class only shows here before it shows in the accuracy."""
    lines = ["", "## Answer classes (% of rows; ablations and variants: first seed; '-' = "
             "no parsed answer)", "",
             "| task | run | labeled gold | test gold | selected pseudo-labels | vanilla | SFT | "
             "SemiEvol |", "|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        seeds = sorted((root / t).glob("seed*"))
        if not seeds:
            continue
        first = seeds[0]
        runs = [*((f"method, {d.name}", d) for d in seeds), *_runs(first)]
        gold = " | ".join(_shares(_counts(first / "00_data" / f"{split}.jsonl", "answer"))
                          for split in ("labeled", "test"))
        for name, d in runs:
            pseudo, preds = d / "05_select" / "pseudo.jsonl", d / "07_eval" / "predictions.jsonl"
            if not pseudo.exists():  # a variant that adopted the method's selection
                pseudo = first / "05_select" / "pseudo.jsonl"
            if not preds.exists():
                continue
            cells = [_shares(_counts(pseudo, "answer")) if pseudo.exists() else "-"]
            cells += [_shares(_counts(preds, "pred", m)) for m in ("vanilla", "sft", "semievol")]
            lines.append(f"| {t} | {name} | {gold} | " + " | ".join(cells) + " |")
    return lines


def balanced(root: Path, tasks: list[str]) -> list[str]:
    """Balanced accuracy of each model on the test rows, per seed of the method and for
    the first seed's ablations and variants, from the stage directories present: an
    accuracy at the majority class's share with a balanced 1/classes is a collapse."""
    lines = ["", "## Balanced accuracy (%, mean recall over the gold classes; seeds in "
             "order; stage directories present)", "",
             "| task | run | vanilla | SFT | SemiEvol |", "|---|---|---|---|---|"]
    for t in tasks:
        seeds = sorted((root / t).glob("seed*"))
        if not seeds:
            continue
        for name, dirs in [("method", seeds), *((n, [d]) for n, d in _runs(seeds[0]))]:
            per_model: dict[str, list[str]] = {}
            for d in dirs:
                preds = d / "07_eval" / "predictions.jsonl"
                if not preds.exists():
                    continue
                rows = [json.loads(x) for x in preds.read_text().splitlines() if x.strip()]
                for m in ("vanilla", "sft", "semievol"):
                    mine = [r for r in rows if r["model"] == m]
                    per_model.setdefault(m, []).append(
                        f"{100 * answer_summary(mine)['balanced_accuracy']:.1f}" if mine else "-")
            if per_model:
                lines.append(f"| {t} | {name} | " + " | ".join(
                    " / ".join(per_model[m]) for m in ("vanilla", "sft", "semievol")) + " |")
    return lines


def _seconds(task_dir: Path) -> str:
    """Every run's stage seconds, from the stage directories present ('-' without)."""
    total = recorded_seconds(task_dir)
    return "-" if total is None else f"{total:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    args = ap.parse_args()
    tasks = sorted(p.parent.name for p in args.root.glob("*/metrics.json"))
    if not tasks:
        print(f"{args.root}: no <task>/metrics.json", file=sys.stderr)
        return 2
    per_task = {t: json.loads((args.root / t / "metrics.json").read_text()) for t in tasks}
    accuracy: dict[str, dict[str, list[float]]] = {}
    for t, m in per_task.items():
        for strategy, by_task in m["accuracy"].items():
            accuracy.setdefault(strategy, {})[t] = by_task[t]["values"]
    lines = ["# SemiEvol with SmolLM2-135M-Instruct on the official data", "",
             "Each task is one `semievol study` (its own report: `<task>/report.md`); this "
             "page merges them (`python scripts/smollm2_table.py results/smollm2`). The tasks may "
             "run different row counts: the wall-time table says each one's.", "",
             *accuracy_table(accuracy), "", "## Paired gaps (SemiEvol - SFT, same seed)", "",
             "| task | per seed | mean | std | SFT > vanilla |", "|---|---|---|---|---|"]
    for t, m in per_task.items():
        h = m["headline"]
        gaps = ", ".join(f"{100 * g:+.1f}" for g in h["paired_gaps"])
        mean = mean_std(h["paired_gaps"])[0]
        spread = f"{100 * h['paired_gap_std']:.1f}" if len(h["paired_gaps"]) > 1 else "-"
        lines.append(f"| {t} | {gaps} | {100 * mean:+.1f} | {spread} | "
                     f"{'yes' if h['sft_beats_vanilla'] else 'no'} |")
    lines += ["", "## What each step did (%, mean over seeds)", "",
              "| measure | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for key, label in DIAGNOSTICS.items():
        cells = []
        for t in tasks:
            d = per_task[t].get("diagnostics", {}).get(key)
            cells.append("-" if not d else f"{100 * d['mean']:.1f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += answer_classes(args.root, tasks)
    lines += balanced(args.root, tasks)
    lines += ["", "## Wall time (s of one core: the method's stages over the seeds, then every "
              "run's stages with the ablations and variants)", "",
              "| task | rows per split | " + " | ".join(
                  ["data", "base", "sft", "index", "propose", "select", "final", "eval",
                   "total", "all runs"]) + " |",
              "|---|---|" + "---|" * 10]
    for t, m in per_task.items():
        s = m.get("stage_seconds", {})
        row = [f"{s.get(k, 0):.0f}" for k in ("data", "base", "sft", "index", "propose",
                                               "select", "final", "eval")]
        lines.append(f"| {t} | {rows_per_split(args.root / t)} | " + " | ".join(row)
                     + f" | {sum(s.values()):.0f} | {_seconds(args.root / t)} |")
    lines += ["", "Plots per task: `<task>/entropy_distributions.png` (vanilla / SFT / "
              "SemiEvol test responses) and `<task>/pseudo_label_accuracy_vs_theta.png`.", ""]
    def summary(v: list[float]) -> dict:
        mean, std = mean_std(v)
        return {"mean": mean, "std": std, "values": v}

    metrics = {"accuracy": {s: {t: summary(v) for t, v in by.items()}
                            for s, by in accuracy.items()},
               "headline": {t: m["headline"] for t, m in per_task.items()},
               "diagnostics": {t: m.get("diagnostics", {}) for t, m in per_task.items()},
               "tasks": tasks}
    (args.root / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (args.root / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
