"""Settings of the semi-supervised stages for SmolLM2, chosen on the labeled split alone.

No test or unlabeled row is read. The labeled file is cut into three disjoint slices:
rows 1-`--train` train M1, the next `--unlabeled` rows play the unlabeled split (their
answers stay in the file only to score the pseudo-labels after the fact: the method
never reads them), and the next `--val` rows score the models as a held-out
validation split. One `semievol study` on those slices runs the preset and each
candidate setting as a variant (stages they share are run once); the table gives, per
candidate, the consistency rate, how many pseudo-labels were selected and how many are
right, and the validation accuracy of M2 against M1 (SFT) and the vanilla model, with
the balanced accuracy and answer counts that tell learning from a collapse onto the
slice's majority class.
Writes results/smollm2/validate.json.

Usage:
  python scripts/smollm2_validate.py --task fpb \
      --candidate t05:propose.sample.temperature=0.5 \
      --candidate paper_data:final.data=labeled+selected
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semievol_jax.pipeline.summary import recorded_seconds  # noqa: E402
from semievol_jax.stats import answer_summary  # noqa: E402

DATA = Path("../shared/data/semievol")


def _write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _answers(run: Path) -> dict[str, dict]:
    """Per model: its answer summary on the slice (`stats.answer_summary`)."""
    by_model: dict[str, list[dict]] = {}
    with open(run / "07_eval" / "predictions.jsonl") as f:
        for line in f:
            r = json.loads(line)
            by_model.setdefault(r["model"], []).append(r)
    return {model: answer_summary(rows) for model, rows in by_model.items()}


def _selected(sel_dir: Path, pool: Path) -> dict[str, dict[str, int]]:
    """The selected pseudo-labels per answer: how many, and how many match the hidden
    gold of the unlabeled slice (scored after the fact)."""
    gold = [r["answer"] for r in csv.DictReader(open(pool, newline=""))]
    out: dict[str, dict[str, int]] = {}
    with open(sel_dir / "pseudo.jsonl") as f:
        for line in f:
            r = json.loads(line)
            c = out.setdefault(r["answer"], {"selected": 0, "right": 0})
            c["selected"] += 1
            c["right"] += r["answer"] == gold[int(r["id"].rsplit("-", 1)[1])]
    return dict(sorted(out.items()))


def _row(name: str, run: Path, pool: Path) -> dict:
    ev = json.loads((run / "07_eval" / "eval.json").read_text())
    answers = _answers(run)
    sel_dir = run / "05_select" if (run / "05_select").is_dir() else run.parents[1] / "05_select"
    sel = json.loads((sel_dir / "record.json").read_text())["metrics"]
    pl = ev.get("pseudo_labels") or {}
    models = ev["models"]
    return {"candidate": name,
            "consistency_rate": sel["consistency_rate"],
            "selected": sel["num_selected"],
            "selected_right": pl.get("accuracy_selected"),
            "selected_by_answer": _selected(sel_dir, pool),
            "answered_right": pl.get("accuracy_all"),
            "val_accuracy_vanilla": models["vanilla"]["accuracy"],
            "val_accuracy_sft": models["sft"]["accuracy"],
            "val_accuracy_semievol": models["semievol"]["accuracy"],
            "val_gold": answers["sft"]["gold"],
            **{f"val_{k}_{m}": answers[m][key] for m in ("vanilla", "sft", "semievol")
               for k, key in (("balanced", "balanced_accuracy"), ("recall", "recall"),
                              ("answers", "answers"))}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fpb")
    ap.add_argument("--candidate", action="append", default=[],
                    metavar="NAME:KEY=V[,KEY=V]", help="a setting to compare with the preset")
    ap.add_argument("--train", type=int, default=64, help="labeled rows that train M1")
    ap.add_argument("--unlabeled", type=int, default=64, help="next rows, answers hidden")
    ap.add_argument("--val", type=int, default=64, help="next rows that score the models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="runs/validate")
    ap.add_argument("--out", default="results/smollm2/validate.json")
    ap.add_argument("--key", help="entry in --out (default: the task, with the slice sizes "
                    "when they are not 64/64/64)")
    args = ap.parse_args()
    src = DATA / args.task / "labeled.csv"
    if not src.is_file():
        print(f"{src}: not found (the official data is read from ../shared)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(src, newline="")))
    a, b, c = args.train, args.train + args.unlabeled, args.train + args.unlabeled + args.val
    if len(rows) < c:
        print(f"{src}: {len(rows)} rows, need {c}", file=sys.stderr)
        return 2
    sizes = (args.train, args.unlabeled, args.val)
    name = args.task if sizes == (64, 64, 64) else f"{args.task}/{'-'.join(map(str, sizes))}"
    work = Path(args.work) / name.replace("/", "-")
    train = _write(rows[:a], work / "train.csv")
    pool = _write(rows[a:b], work / "pool.csv")
    val = _write(rows[b:c], work / "val.csv")
    out_dir = work / "study"
    cmd = [sys.executable, "-m", "semievol_jax", "study", "--config", f"smollm2-{args.task}",
           "--out", str(out_dir), "--seeds", str(args.seed), "--ablation-seeds",
           "--jobs", str(args.jobs)]
    for spec in args.candidate:
        cmd += ["--variant", spec]
    cmd += [f"data.labeled={train}", f"data.unlabeled={pool}", f"data.test={val}",
            "data.max_leakage=1.0"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seed_dir = out_dir / f"seed{args.seed}"
    results = [_row("preset", seed_dir, pool)]
    for spec in args.candidate:
        cand = spec.split(":", 1)[0]
        results.append(_row(cand, seed_dir / "variants" / cand, pool))
    doc = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    key = args.key or name
    doc[key] = {
        "command": " ".join(["python", "scripts/smollm2_validate.py", *sys.argv[1:]]),
        "train_rows": f"labeled.csv rows 1-{a}",
        "unlabeled_rows": f"labeled.csv rows {a + 1}-{b} (answers used only to score)",
        "val_rows": f"labeled.csv rows {b + 1}-{c}",
        "seed": args.seed, "candidates": {s.split(':', 1)[0]: s.split(':', 1)[1]
                                          for s in args.candidate},
        "results": results, "wall_s": round(time.perf_counter() - t0, 1),
        "stage_seconds": round(recorded_seconds(seed_dir), 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'candidate':<18} {'consistent':>10} {'selected':>8} {'right':>6} "
          f"{'vanilla':>8} {'SFT':>6} {'SemiEvol':>9} {'bal SFT':>8} {'bal M2':>7}  M2 answers")
    for r in results:
        right = "-" if r["selected_right"] is None else f"{r['selected_right']:.3f}"
        print(f"{r['candidate']:<18} {r['consistency_rate']:>10.3f} {r['selected']:>8} "
              f"{right:>6} {r['val_accuracy_vanilla']:>8.3f} {r['val_accuracy_sft']:>6.3f} "
              f"{r['val_accuracy_semievol']:>9.3f} {r['val_balanced_sft']:>8.3f} "
              f"{r['val_balanced_semievol']:>7.3f}  {r['val_answers_semievol']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
