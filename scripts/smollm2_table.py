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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semievol_jax.pipeline.report import DIAGNOSTICS, accuracy_table  # noqa: E402
from semievol_jax.stats import mean_std  # noqa: E402


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
             "page merges them (`python scripts/smollm2_table.py results/smollm2`).", "",
             *accuracy_table(accuracy), "", "## Paired gaps (SemiEvol - SFT, same seed)", "",
             "| task | per seed | mean | std | SFT > vanilla |", "|---|---|---|---|---|"]
    for t, m in per_task.items():
        h = m["headline"]
        gaps = ", ".join(f"{100 * g:+.1f}" for g in h["paired_gaps"])
        mean = mean_std(h["paired_gaps"])[0]
        lines.append(f"| {t} | {gaps} | {100 * mean:+.1f} | {100 * h['paired_gap_std']:.1f} | "
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
    lines += ["", "## Wall time (s, all seeds and variants of the method's stages)", "",
              "| task | " + " | ".join(["data", "base", "sft", "index", "propose", "select",
                                        "final", "eval", "total"]) + " |",
              "|---|" + "---|" * 9]
    for t, m in per_task.items():
        s = m.get("stage_seconds", {})
        row = [f"{s.get(k, 0):.0f}" for k in ("data", "base", "sft", "index", "propose",
                                               "select", "final", "eval")]
        lines.append(f"| {t} | " + " | ".join(row) + f" | {sum(s.values()):.0f} |")
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
