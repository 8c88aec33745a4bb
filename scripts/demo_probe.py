"""Probe of the demo world: does SemiEvol's mechanism work at the demo's scale?

Runs, on the synthetic task of `semievol_jax.demo.synth` and a tiny base pretrained by
`semievol_jax.demo.pretrain`, with the project's own train / generate / prompt code:

  (a) vanilla: the base with the chat-rendered prompt, greedy;
  (b) SFT: fine-tuned on labeled.csv;
  (c) semi: fine-tuned on labeled + (b)'s greedy answers on unlabeled.csv whose response
      entropy is under the θ-quantile (SemiEvol's adaptive selection, minus the
      collaborators and retrieval, which the pipeline adds);

over several seeds (the base is pretrained once; seeds vary SFT data order and LoRA init),
prints a table and writes results/bench/demo_probe.json.

  .venv/bin/python scripts/demo_probe.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/demo_probe", help="data, base and SFT scratch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--pretrain", nargs="*", default=[], help="PretrainConfig field=value")
    p.add_argument("--synth", nargs="*", default=[], help="SynthConfig field=value")
    p.add_argument("--mode", default="full", choices=["full", "lora"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--theta", type=float, default=0.5, help="entropy quantile kept")
    p.add_argument("--json", default="results/bench/demo_probe.json")
    p.add_argument("--oracle", action="store_true",
                   help="also (d): SFT on labeled + unlabeled with its gold answers")
    p.add_argument("--diagnose-only", action="store_true",
                   help="only pretrain (or reuse) the base and print base_diagnostics")
    p.add_argument("--reuse-base", action="store_true",
                   help="keep <work>/base when it was pretrained with the same config")
    return p.parse_args(argv)


def _fields(cls, items: list[str]):
    """`field=value` strings -> kwargs typed like the dataclass defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        d = defaults[k]
        out[k] = (tuple(v.split(",")) if isinstance(d, tuple) else
                  type(d)(v) if not isinstance(d, bool) else v.lower() in ("1", "true"))
    return out


def base_diagnostics(model, tokenizer, scfg, *, people: int = 24) -> dict[str, float]:
    """What the base knows, without the chat template (the numbers in docs/demo.md).

    recall: the relation's values scored after the first prose prefix ("Bapis lives
    in"), argmax == the fact. quiz_cloze / quiz_plain: the corpus's quiz layout ending in
    "Answer: ", argmax over the option letters == the right one.
    """
    import jax
    import jax.numpy as jnp

    from semievol_jax.demo import synth

    world = synth.make_world(scfg)
    rels = {r.name: r for r in synth.RELATIONS}
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id

    def logprob(texts):
        ids = [[bos, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
        width = max(map(len, ids))
        x = np.array([i + [pad] * (width - len(i)) for i in ids])
        valid = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids], bool)
        pos = np.broadcast_to(np.arange(width), x.shape)
        lp = jax.nn.log_softmax(model(jnp.asarray(x), jnp.asarray(pos),
                                      valid_BT=jnp.asarray(valid)).logits_BTV)
        tok = np.take_along_axis(np.asarray(lp[:, :-1]), x[:, 1:, None], -1)[..., 0]
        return (tok * valid[:, 1:]).sum(1)

    rng = np.random.default_rng(0)
    out: dict[str, list[bool]] = {}
    for group, names in (("task", world.people), ("practice", world.practice_people)):
        for person in names[:people]:
            for rn in scfg.relations:
                r, value = rels[rn], world.facts[(person, rn)]
                values = r.values[: scfg.num_values]
                prefix = r.statements[0].split("{v}")[0].format(e=person)
                best = values[int(np.argmax(logprob([prefix + v for v in values])))]
                out.setdefault(f"{group}_recall", []).append(best == value)
                tpls = r.question_templates()
                t = int(rng.integers(len(tpls)))
                options, letter = synth._options(value, r, scfg, rng)
                text = synth.render_quiz(tpls[t].format(e=person), options, None)
                letters = synth.LETTERS[: len(options)]
                pick = letters[int(np.argmax(logprob([f"{text}\nAnswer: {x}" for x in letters])))]
                kind = "cloze" if tpls[t].startswith("Complete:") else "plain"
                out.setdefault(f"{group}_quiz_{kind}", []).append(pick == letter)
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(out.items())}


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from semievol_jax import rng
    from semievol_jax.demo.pretrain import PretrainConfig, pretrain_base
    from semievol_jax.demo.synth import SynthConfig, read_corpus, write_demo_data
    from semievol_jax.generate import SampleConfig, generate, render_prompt
    from semievol_jax.model import LoraConfig, load_hf, load_tokenizer
    from semievol_jax.pipeline import prompts
    from semievol_jax.pipeline.data import load_split
    from semievol_jax.pipeline.tasks import get_task
    from semievol_jax.sharding import MeshConfig, make_mesh
    from semievol_jax.train import SFTExample, TrainConfig, train

    t_start = time.perf_counter()
    work = Path(args.work)
    scfg = SynthConfig(seed=args.data_seed, **_fields(SynthConfig, args.synth))
    pcfg = PretrainConfig(**_fields(PretrainConfig, args.pretrain))
    paths = write_demo_data(work / "data", scfg)
    task = get_task("mmlu_pro")  # choice task, 3-10 options; instruction = synth.INSTRUCTION
    splits = {s: load_split(paths[s], task, split_name=s) for s in ("labeled", "unlabeled",
                                                                      "test")}
    timings = {}
    t0 = time.perf_counter()
    base = work / "base"
    metrics = base / "pretrain_metrics.json"
    same = metrics.exists() and json.loads(metrics.read_text())["config"] == \
        dataclasses.asdict(pcfg) and json.loads(metrics.read_text())["seed"] == args.base_seed
    if not (args.reuse_base and same):
        pretrain_base(read_corpus(paths["corpus"]), base, cfg=pcfg, seed=args.base_seed,
                      log=lambda m: print(m, flush=True))
    timings["pretrain_s"] = time.perf_counter() - t0
    tokenizer = load_tokenizer(base)
    mesh = make_mesh(MeshConfig())
    greedy = SampleConfig(temperature=0.0, max_new_tokens=8, stop=("\n\n",), batch_size=64)

    def prompt_texts(exs):
        return [render_prompt(tokenizer, prompts.format_question(task, e)) for e in exs]

    def predict(model, exs):
        out = generate(model, tokenizer, prompt_texts(exs), greedy, key=jax.random.key(0),
                       progress=False)
        preds = [task.extract_answer(s[0].text, e.options) for s, e in zip(out, exs, strict=True)]
        return preds, np.array([s[0].entropy for s in out], dtype=np.float64)

    def accuracy(preds, exs):
        return float(np.mean([p is not None and task.is_correct(p, e.answer)
                              for p, e in zip(preds, exs, strict=True)]))

    def by_relation(preds, exs):
        """Accuracy per relation and per question kind (cloze / plain)."""
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(exs):
            groups.setdefault(e.meta.get("relation", "?"), []).append(i)
            kind = "cloze" if e.question.startswith("Complete:") else "plain"
            groups.setdefault(kind, []).append(i)
        return {g: round(accuracy([preds[i] for i in idx], [exs[i] for i in idx]), 3)
                for g, idx in sorted(groups.items())}

    def finetune(pairs, seed, tag):
        lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank, dropout=0.0) \
            if args.mode == "lora" else None
        model, _ = load_hf(base, lora=lora)
        tcfg = TrainConfig(mode=args.mode, learning_rate=args.lr, epochs=args.epochs,
                           batch_size=8, cutoff_len=256, length_buckets=(128, 256),
                           compute_dtype=None, checkpoint_every=10_000,
                           async_checkpoint=False, tensorboard=False, progress=False,
                           log_every=10_000)
        examples = [SFTExample(prompts.format_question(task, e), prompts.target(task, a))
                    for e, a in pairs]
        run_dir = work / f"sft-{tag}-{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # never resume a run of another config
        train(model, tokenizer, examples, tcfg, run_dir, mesh=mesh,
              key=rng.key_for(seed, "train"))
        return model

    vanilla, _ = load_hf(base)
    diagnostics = base_diagnostics(vanilla, tokenizer, scfg)
    print(f"base diagnostics: {diagnostics}", flush=True)
    if args.diagnose_only:
        return 0
    pv, _ = predict(vanilla, splits["test"])
    rows = {"vanilla": [accuracy(pv, splits["test"])] * len(args.seeds), "sft": [],
            "semi": []}
    detail = []
    lab, unl, test = splits["labeled"], splits["unlabeled"], splits["test"]
    for seed in args.seeds:
        t0 = time.perf_counter()
        m1 = finetune([(e, e.answer) for e in lab], seed, "l")
        p1, _ = predict(m1, test)
        fit = accuracy(predict(m1, lab)[0], lab)
        pu, hu = predict(m1, unl)
        ok = np.array([p is not None for p in pu])
        cut = np.quantile(hu[ok], args.theta) if ok.any() else -np.inf
        keep = [i for i in range(len(unl)) if ok[i] and hu[i] <= cut]
        right = np.array([task.is_correct(pu[i], unl[i].answer) if ok[i] else False
                          for i in range(len(unl))])
        m2 = finetune([(e, e.answer) for e in lab] + [(unl[i], pu[i]) for i in keep], seed,
                      "lu")
        p2, _ = predict(m2, test)
        if args.oracle:  # the most that pseudo-labels on this unlabeled set could give
            m3 = finetune([(e, e.answer) for e in lab] + [(e, e.answer) for e in unl], seed,
                          "oracle")
            rows.setdefault("oracle", []).append(accuracy(predict(m3, test)[0], test))
        rows["sft"].append(accuracy(p1, test))
        rows["semi"].append(accuracy(p2, test))
        d = {"seed": seed, "sft": rows["sft"][-1], "semi": rows["semi"][-1], "sft_train_acc": fit,
             "sft_by_relation": by_relation(p1, test), "semi_by_relation": by_relation(p2, test),
             "unlabeled_acc": float(right.mean()), "kept": len(keep),
             "kept_acc": float(right[keep].mean()) if keep else None,
             "dropped_acc": float(np.delete(right, keep).mean()) if len(keep) < len(unl)
             else None, "wall_s": time.perf_counter() - t0}
        detail.append(d)
        print(json.dumps(d), flush=True)
    timings["total_s"] = time.perf_counter() - t_start
    summary = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v}
               for k, v in rows.items()}
    print(f"\n{'strategy':<10} {'test acc':>16}   per seed")
    for k, s in summary.items():
        print(f"{k:<10} {s['mean']:>8.3f} ± {s['std']:.3f}   {s['per_seed']}")
    print(f"vanilla by relation: {by_relation(pv, test)}")
    print(f"pretrain {timings['pretrain_s']:.0f}s, total {timings['total_s']:.0f}s")
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "device": f"{jax.default_backend()} ({platform.processor() or platform.machine()}), "
                  f"{jax.device_count()} device(s); 2 shared CPU cores",
        "synth": dataclasses.asdict(scfg), "pretrain": dataclasses.asdict(pcfg),
        "sft": {"mode": args.mode, "lr": args.lr, "epochs": args.epochs, "theta": args.theta},
        "base_diagnostics": diagnostics, "summary": summary, "per_seed": detail,
        "timings_s": timings,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
