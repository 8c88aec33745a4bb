"""The SFT learning rate for SmolLM2, chosen on the labeled split alone (no test row).

The labeled file's first `--train` rows train M1 (LoRA, the smollm2 preset's settings
otherwise) and its next `--val` rows score it: a held-out validation split, as the
official LLaMA-Factory runs keep 5% of the labeled set. Each candidate learning rate is
one pipeline run (`semievol run --config smollm2-<task>`) whose "test" split is that
validation slice and whose unlabeled split is a few labeled questions without their
answers (the method's later stages are not what this measures). Writes a table and
results/smollm2/sft_lr.json.

Usage:
  python scripts/smollm2_sft_lr.py --task fpb --lrs 1e-4 3e-4 1e-3 3e-3
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("../shared/data/semievol")


def _write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fpb")
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3, 3e-3])
    ap.add_argument("--train", type=int, default=64, help="labeled rows that train M1")
    ap.add_argument("--val", type=int, default=64, help="next labeled rows that score it")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="runs/sft_lr")
    ap.add_argument("--out", default="results/smollm2/sft_lr.json")
    args = ap.parse_args()
    src = DATA / args.task / "labeled.csv"
    if not src.is_file():
        print(f"{src}: not found (the official data is read from ../shared)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(src, newline="")))
    need = args.train + args.val + 8
    if len(rows) < need:
        print(f"{src}: {len(rows)} rows, need {need}", file=sys.stderr)
        return 2
    work = Path(args.work) / args.task
    train = _write(rows[:args.train], work / "train.csv")
    val = _write(rows[args.train:args.train + args.val], work / "val.csv")
    pool = _write(rows[args.train + args.val:args.train + args.val + 8], work / "pool.csv")
    results = []
    for lr in args.lrs:
        run = work / f"lr{lr:g}"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "semievol_jax", "run", "--config", f"smollm2-{args.task}",
               "--run-dir", str(run), f"data.labeled={train}", f"data.test={val}",
               f"data.unlabeled={pool}", f"sft.train.learning_rate={lr}",
               f"sft.train.epochs={args.epochs}", "data.max_leakage=1.0"]
        subprocess.run(cmd, check=True)
        ev = json.loads((run / "07_eval" / "eval.json").read_text())["models"]
        results.append({"learning_rate": lr, "val_accuracy_sft": ev["sft"]["accuracy"],
                        "val_accuracy_vanilla": ev["vanilla"]["accuracy"],
                        "val_parse_rate_sft": ev["sft"]["parse_rate"],
                        "wall_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(results[-1]), flush=True)
        _record(Path(args.out), args, results)  # after each run: a long sweep may be cut
    best = _record(Path(args.out), args, results)
    print(f"{'lr':>8} {'val acc (SFT)':>14} {'vanilla':>8}")
    for r in results:
        print(f"{r['learning_rate']:>8g} {r['val_accuracy_sft']:>14.3f} "
              f"{r['val_accuracy_vanilla']:>8.3f}")
    print(f"best: {best['learning_rate']:g}; wrote {args.out}")
    return 0


def _record(out: Path, args: argparse.Namespace, results: list[dict]) -> dict:
    """Merges this task's results into `out` (earlier learning rates kept); returns the best."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    old = {r["learning_rate"]: r for r in doc.get(args.task, {}).get("results", [])}
    merged = sorted({**old, **{r["learning_rate"]: r for r in results}}.values(),
                    key=lambda r: r["learning_rate"])
    best = max(merged, key=lambda r: r["val_accuracy_sft"])
    doc[args.task] = {"command": "python scripts/smollm2_sft_lr.py --task TASK --lrs LR ...",
                      "train_rows": f"labeled.csv rows 1-{args.train}",
                      "val_rows": f"labeled.csv rows {args.train + 1}-{args.train + args.val}",
                      "epochs": args.epochs, "results": merged,
                      "best_learning_rate": best["learning_rate"]}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return best


if __name__ == "__main__":
    raise SystemExit(main())
