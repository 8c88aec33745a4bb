"""Diagnoses a finished `semievol demo` run: which link of the demo's premise holds.

  .venv/bin/semievol demo --out /tmp/demo        # the seed directories are not committed
  python scripts/demo_diagnose.py /tmp/demo --out results/demo/diagnosis.json

A variant of the preset diagnoses the same way when run into RUN/seed0:

  .venv/bin/semievol run --config demo --run-dir /tmp/v/seed0 base.pretrain.steps=1600
  python scripts/demo_diagnose.py /tmp/v

Prints a table per measurement (scripts/demo_diagnosis.py says what each means) and
writes them as JSON, with whether the run's digests equal the committed results/demo's,
i.e. whether the numbers describe the committed run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import demo_diagnosis as diagnose  # beside this script

from semievol_jax.pipeline import parallel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a `semievol demo --out` directory")
    ap.add_argument("--committed", type=Path, default=Path("results/demo/digests.json"))
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    seeds = sorted(p for p in args.run.glob("seed*") if (p / "07_eval").is_dir())
    data = args.run / "seed0" / "00_data"
    if not seeds or not (data / "raw" / "labeled.csv").is_file():
        print(f"{args.run}: no finished `semievol demo` run (seed0/00_data, seed*/07_eval)",
              file=sys.stderr)
        return 2
    # A plain `semievol run --run-dir RUN/seed0` (a variant of the preset) has no
    # digests.json; it is not the committed run.
    digests = args.run / "digests.json"
    same = (digests.is_file() and args.committed.is_file()
            and json.loads(digests.read_text()) == json.loads(args.committed.read_text()))
    base = args.run / "seed0" / "01_base"
    out = {
        "run": str(args.run),
        "digests_equal_committed": same,
        "base": diagnose.base_diagnosis(base, data, args.run / "seed0" / "config.yaml"),
        "seeds": {p.name: diagnose.seed_diagnosis(p, data) | m1_diagnosis(base, p, data)
                  for p in seeds},
    }
    print_tables(out)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def m1_diagnosis(base: Path, seed_dir: Path, data: Path) -> dict:
    """What one seed's M1 does with a same-fact demonstration, and how many selected
    pseudo-labels differ from its own greedy answers."""
    m1, tok = diagnose.load_stage_model(base, seed_dir / "02_sft")
    return {"sft_same_fact_demo": diagnose.demo_use_of(m1, tok, seed_dir / "config.yaml", data),
            "pseudo_labels_vs_m1_greedy": diagnose.teacher_vs_student_of(m1, tok, seed_dir,
                                                                         data)}


def print_tables(d: dict) -> None:
    b = d["base"]
    pr = b["prose_recall_task_facts"]
    print(f"digests equal the committed results/demo: {d['digests_equal_committed']}\n")
    print("| base model | value |\n|---|---|")
    print(f"| prose completions of task facts right | {100 * pr['phrasings']:.1f}% |")
    print(f"| task facts known (>= 2 of 3 phrasings) | {100 * pr['facts']:.1f}% "
          f"of {pr['num_facts']} |")
    print(f"| practice-person quizzes (corpus documents) | "
          f"{100 * b['quiz_accuracy_practice_people']:.1f}% of {b['num_practice_quizzes']} |")
    print(f"| test questions as raw quizzes | {100 * b['quiz_accuracy_test_questions']:.1f}% |")
    print("\nunlabeled questions whose fact the labeled set asks, greedy, with that labeled")
    print("example as the one demonstration (an oracle retriever) and with none:")
    print("| model | n | no demo | same-fact demo |\n|---|---|---|---|")
    rows = [("base", b["same_fact_demo"])] + [(f"{s} M1", v["sft_same_fact_demo"])
                                              for s, v in d["seeds"].items()]
    for name, u in rows:
        print(f"| {name} | {u['n']} | {100 * u['accuracy_without_demo']:.1f}% | "
              f"{100 * u['accuracy_with_same_fact_demo']:.1f}% |")
    print("\ntest accuracy by whether the labeled set asks the fact; the pooled row answers each")
    print("test question with the plurality of all collaborator answers about its fact:")
    print("| seed | model | test, fact in labeled | test, fact not in labeled | "
          "pseudo-labels, in / not in labeled |\n|---|---|---|---|---|")
    for s, v in d["seeds"].items():
        pl = v["pseudo_labels_by_coverage"]
        for m in ("sft", "semievol"):
            t = v["test_by_coverage"][m]
            print(f"| {s} | {m} | {100 * t['covered']['accuracy']:.1f}% "
                  f"({t['covered']['n']}) | {100 * t['uncovered']['accuracy']:.1f}% "
                  f"({t['uncovered']['n']}) | {100 * pl['covered']['accuracy']:.1f}% / "
                  f"{100 * pl['uncovered']['accuracy']:.1f}% |")
        t = v["test_by_pooled_collaborators"]
        print(f"| {s} | collaborators pooled per fact | {100 * t['covered']['accuracy']:.1f}% "
              f"| {100 * t['uncovered']['accuracy']:.1f}% | |")
    count_table(d, "repairs", (
        "covered test questions M1 gets wrong: how many the pooled vote gets right, and how\n"
        "many of those SemiEvol gets right; and covered questions M1 got right that SemiEvol\n"
        "gets wrong:"), {
        "covered": "covered", "sft_wrong": "M1 wrong", "sft_wrong_pooled_right": "pooled right",
        "of_those_final_right": "SemiEvol right",
        "sft_right_final_wrong": "M1 right, SemiEvol wrong"})
    print("\nhow far M1's right/wrong is fixed by the fact, and by the fact with the phrasing of")
    print("its options (unlabeled: the collaborators' majority; test: M1's greedy answer):")
    print("| seed | by fact | by fact and option phrasing |\n|---|---|---|")
    for s, v in d["seeds"].items():
        p = v["m1_purity"]
        print(f"| {s} | {100 * p['fact']['purity']:.1f}% ({p['fact']['questions']}) | "
              f"{100 * p['fact_and_phrasing']['purity']:.1f}% "
              f"({p['fact_and_phrasing']['questions']}) |")
    print("\ntest accuracy by where the right selected pseudo-labels about the fact are:")
    print("| seed | where | n | M1 | SemiEvol |\n|---|---|---|---|---|")
    for s, v in d["seeds"].items():
        for where, b in v["carry_over"].items():
            print(f"| {s} | {where} | {b['n']} | {b['sft']} | {b['semievol']} |")
    count_table(d, "pseudo_labels_vs_m1_greedy", (
        "selected pseudo-labels against M1's own greedy answer to the same prompt (the final\n"
        "tuning starts from M1: only labels that differ can teach it something new):"), {
        "selected": "selected", "same_as_m1": "= M1's answer", "differ": "differ",
        "differ_label_right": "of those, label right", "differ_m1_right": "M1 right"})
    fr = list(next(iter(d["seeds"].values()))["majority_precision_by_entropy"])
    print("\nmajority-answer precision among the lowest-entropy fraction of unlabeled:")
    print("| seed | " + " | ".join(fr) + " |\n|---|" + "---|" * len(fr))
    for s, v in d["seeds"].items():
        c = v["majority_precision_by_entropy"]
        print(f"| {s} | " + " | ".join(f"{100 * c[f]:.1f}%" for f in fr) + " |")
    print("\nICP (k = 3): nearest labeled example of each unlabeled question shares its")
    print("| seed | fact | person | relation | fact in labeled at all |\n|---|---|---|---|---|")
    for s, v in d["seeds"].items():
        n = v.get("icp_nearest_neighbour")
        if n:
            print(f"| {s} | {100 * n['same_fact']:.1f}% | {100 * n['same_person']:.1f}% | "
                  f"{100 * n['same_relation']:.1f}% | {100 * n['covered']:.1f}% |")


def count_table(d: dict, key: str, title: str, columns: dict[str, str]) -> None:
    """One row of counts per seed: `d["seeds"][seed][key][field]` under each column."""
    print(f"\n{title}\n| seed | " + " | ".join(columns.values()) + " |\n|---|"
          + "---|" * len(columns))
    for s, v in d["seeds"].items():
        print(f"| {s} | " + " | ".join(str(v[key][f]) for f in columns) + " |")


if __name__ == "__main__":
    # The demo's runs are single-core (semievol_jax/pipeline/parallel.py); so are the
    # greedy answers compared with their pseudo-labels here.
    parallel.pin_to_one_core()
    sys.exit(main())
