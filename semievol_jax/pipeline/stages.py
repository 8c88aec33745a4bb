"""The SemiEvol stages, each a function of its sub-config and its upstream directories.

    data -> base -> sft (IWP) -> index (ICP) -> propose (CL) -> select (CL + AS) -> final -> eval

Files each stage writes (all digested unless under `logs/`):
  00_data     labeled.jsonl, unlabeled.jsonl (no answers), test.jsonl, leakage.json,
              held/unlabeled_gold.json (read only by `eval`, to score pseudo-labels)
  01_base     base.json (the checkpoint's source), model/ when pretrained here
  02_sft      model/ (PEFT adapter for LoRA, HF checkpoint for full), train.json
  03_index    labeled_emb.npy, unlabeled_emb.npy, neighbours.npy, prompts.jsonl
  04_propose  candidates.jsonl (n responses per unlabeled question + log-probs)
  05_select   reflections.jsonl, selection.json, pseudo.jsonl
  06_final    model/, train.json
  07_eval     eval.json, predictions.jsonl

Rounds after the first (`run_dir/round<r>/`) have no data stage (they adopt round 1's);
their `01_base` is written by `run_round_base` from the previous round's M2.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semievol_jax import model as m
from semievol_jax import rng
from semievol_jax.errors import UserError
from semievol_jax.files import (
    file_digest,
    read_jsonl,
    to_jsonable,
    write_json_atomic,
    write_jsonl,
)
from semievol_jax.generate import embed, generate, render_prompt
from semievol_jax.model.hf_io import resolve_checkpoint  # not in the package's exports
from semievol_jax.pipeline import checks, prompts, selection
from semievol_jax.pipeline.checkpoint_look import look_at_checkpoint
from semievol_jax.pipeline.config import (
    FINAL_DATA,
    BaseConfig,
    DataConfig,
    EvalConfig,
    FinalConfig,
    IndexStageConfig,
    ProposeConfig,
    SelectConfig,
    SftConfig,
)
from semievol_jax.pipeline.data.examples import Example, GoldAnswers, UnlabeledQuestion
from semievol_jax.pipeline.data.splits import load_splits
from semievol_jax.pipeline.data.synth import write_world
from semievol_jax.pipeline.models import (
    EVAL_ANSWERS,
    MODEL_DIR,
    ModelRef,
    answers_key,
    base_name,
    base_ref,
    load_model,
    previous_m2,
    tuned_ref,
)
from semievol_jax.pipeline.runner import StageContext, read_record
from semievol_jax.pipeline.sources import file_digests
from semievol_jax.pipeline.tasks import Task, resolve_task
from semievol_jax.retrieval import build_demo_prompts, build_index
from semievol_jax.train import SFTExample, train
from semievol_jax.train.pretrain import pretrain_base

SPLITS = ("labeled", "unlabeled", "test")
CORPUS = "raw/corpus.jsonl"  # a generated source's pretraining text, in the data stage


# ----------------------------------------------------------------------------- helpers

def task_of(data_cfg: DataConfig) -> Task:
    """The run's task: a registered name, or an inline definition (`data.task_def`)."""
    if data_cfg.task_def is None:
        return resolve_task(data_cfg.task)
    return resolve_task({**data_cfg.task_def, "name": data_cfg.task})


def _example_row(ex) -> dict[str, Any]:
    row = {"id": ex.id, "question": ex.question, "options": list(ex.options)}
    if getattr(ex, "answer", None) is not None:
        row["answer"] = ex.answer
    return row


def examples(path: Path) -> list[Example]:
    """The examples a stage wrote with `_example_row`."""
    return [Example(id=r["id"], question=r["question"], options=tuple(r["options"]),
                    answer=r.get("answer"), meta={}) for r in read_jsonl(path)]


def unlabeled_questions(path: Path) -> list[UnlabeledQuestion]:
    """The unlabeled questions the data stage wrote (no answers)."""
    return [UnlabeledQuestion(id=r["id"], question=r["question"],
                              options=tuple(r["options"]), meta={})
            for r in read_jsonl(path)]


def user_prompts(tokenizer, task, items) -> list[str]:
    """The chat-rendered question prompts of `items`."""
    return [render_prompt(tokenizer, prompts.format_question(task, ex)) for ex in items]


# ----------------------------------------------------------------------------- stages

def data_sources(cfg: DataConfig) -> dict[str, str]:
    """Split name -> the file, directory or hub id it is read from (none for a generated
    source: its files are made by the stage, from the config)."""
    if cfg.synth is not None:
        return {}
    return {k: v for k, v in {"labeled": cfg.labeled, "unlabeled": cfg.unlabeled,
                              "test": cfg.test}.items() if v}


def run_data(ctx: StageContext) -> dict[str, Any]:
    """Load and validate the three splits (all problems reported at once); notes and the
    leakage line on stderr and in the record's metrics."""
    cfg: DataConfig = ctx.config
    task = task_of(cfg)
    sources = {"labeled": cfg.labeled, "unlabeled": cfg.unlabeled, "test": cfg.test}
    if cfg.synth is not None:  # a generated source: its split files and corpus under raw/
        paths = write_world(ctx.out / "raw", cfg.synth)
        sources = {k: str(paths[k]) for k in SPLITS}
    splits = load_splits(sources, task, max_rows=cfg.max_rows,
                         max_leakage=checks.max_leakage(cfg))
    for line in [*splits.notes, splits.leakage.test_line()]:
        print(f"[data] {line}", file=sys.stderr)
    write_jsonl(ctx.out / "labeled.jsonl", [_example_row(e) for e in splits.labeled])
    write_jsonl(ctx.out / "unlabeled.jsonl", [_example_row(q) for q in splits.unlabeled])
    write_jsonl(ctx.out / "test.jsonl", [_example_row(e) for e in splits.test])
    (ctx.out / "held").mkdir()
    write_json_atomic(ctx.out / "held" / "unlabeled_gold.json",
                      {qid: splits.gold[qid] for qid in splits.gold.ids()})
    write_json_atomic(ctx.out / "leakage.json", splits.leakage.to_dict())
    return {**splits.counts(), "leakage": splits.leakage.summary(),
            "leakage_test_rows_shared": splits.leakage.test_rows_shared,
            "leakage_line": splits.leakage.test_line(), "notes": splits.notes}


def base_sources(cfg: BaseConfig) -> dict[str, str]:
    """What the base stage reads from outside the run: the checkpoint (a directory, a
    .gguf file, a fetchable model, a hub id); nothing when it pretrains one here."""
    return {"model": cfg.model} if cfg.pretrain is None and cfg.model else {}


def run_base(ctx: StageContext, *, seed: int, task: Task) -> dict[str, Any]:
    """Resolve the base checkpoint, or pretrain a tiny base: on the data stage's corpus
    (a generated source writes one), or (a real task, e.g. results/fpb-tiny) on the
    unlabeled questions' prompts."""
    cfg: BaseConfig = ctx.config
    if cfg.pretrain is not None:
        corpus_path = ctx.inputs["data"] / CORPUS
        if corpus_path.exists():
            docs = [row["text"] for row in read_jsonl(corpus_path)]
        else:  # unlabeled text in the task's prompt layout: no answers, no test rows
            qs = unlabeled_questions(ctx.inputs["data"] / "unlabeled.jsonl")
            docs = [prompts.format_question(task, q) for q in qs]
        pretrain_base(docs, ctx.out / MODEL_DIR, cfg=cfg.pretrain, work_dir=ctx.work,
                      seed=seed)
        write_json_atomic(ctx.out / "base.json", {"model": MODEL_DIR, "local": True})
        return {"pretrained": True}
    if not cfg.model:
        raise UserError("base.model is empty: give an HF checkpoint directory or hub id")
    # The cheap look (config, tensor index, format) before this stage is recorded done: a
    # checkpoint that cannot load must not become a finished base that sft then refuses.
    if problems := look_at_checkpoint(cfg.model, allow_pickle=cfg.allow_pickle).problems:
        raise UserError("\n".join(problems))
    resolved = str(Path(resolve_checkpoint(cfg.model, allow_pickle=cfg.allow_pickle))
                   .resolve())
    # The base is referenced where it lies (an 8B checkpoint is not copied) and by the
    # name the user gave (machine-independent digests); its files' digests go into this
    # stage's output, so a changed checkpoint reruns everything downstream. A local
    # directory was digested already, for the stage's key (ctx.sources).
    root = Path(resolved)
    files = file_digests(ctx.sources.get("model", {}))
    if not files:
        files = {p.relative_to(root).as_posix(): file_digest(p) for p in sorted(root.rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
    # How the later stages store, multiply and attend is part of the base they load:
    # another setting must rerun them. Absent at the defaults, so that the digests of
    # runs made before the fields existed hold.
    numerics = ({} if cfg.matmul_dtype is None
                else {"dtype": cfg.dtype, "matmul_dtype": cfg.matmul_dtype})
    if cfg.causal_block:
        numerics["causal_block"] = cfg.causal_block
    write_json_atomic(ctx.out / "base.json", {"model": cfg.model, "local": False,
                                              "files": files, **numerics})
    return {"resolved": resolved}


def run_round_base(ctx: StageContext, *, mesh) -> dict[str, Any]:
    """Round r+1's base: round r's M2 as an HF checkpoint.

    LoRA: the adapter is merged into its base and saved here (`model/`), so the next
    round trains fresh adapters on the evolved weights. Full fine-tuning: M2 already is
    an HF checkpoint; it is referenced where it lies (relative path, no copy) and its
    file digests, taken from the final stage's record, go into `base.json`, so a
    changed M2 changes this stage's output digest and reruns the round.
    """
    cfg: BaseConfig = ctx.config
    ref = previous_m2(ctx.inputs)
    if ref.adapter is not None:
        model, tokenizer = load_model(ref, cfg, mesh=mesh)
        m.save_hf(model, ctx.out / MODEL_DIR, tokenizer=tokenizer, merge_lora=True)
        write_json_atomic(ctx.out / "base.json", {"model": MODEL_DIR, "local": True})
        return {"merged_adapter": True}
    # A final stage that selected nothing left M2 = M1: continue from the SFT checkpoint.
    owner = next((ctx.inputs[k] for k in ("prev_final", "prev_sft")
                  if Path(ref.base).resolve() == (ctx.inputs[k] / MODEL_DIR).resolve()), None)
    if owner is None:
        raise UserError(f"{ctx.inputs['prev_final']}: the previous round tuned no model to "
                        "continue from (sft and final both disabled)")
    prefix = MODEL_DIR + "/"
    files = {k[len(prefix):]: v for k, v in read_record(owner)["outputs"].items()
             if k.startswith(prefix)}
    # ctx.out is a sibling of the final stage directory, so the relative path holds there.
    rel = os.path.relpath(Path(ref.base).resolve(), ctx.out.resolve())
    write_json_atomic(ctx.out / "base.json", {"model": Path(rel).as_posix(), "local": True,
                                              "files": files})
    return {"merged_adapter": False}


def _sft_examples(task, exs) -> list[SFTExample]:
    return [SFTExample(prompts.format_question(task, e), prompts.target(task, e.answer, e.options))
            for e in exs]


def _tune(ctx: StageContext, start: ModelRef, exs, train_cfg, lora_cfg, base_cfg: BaseConfig,
          *, mesh, seed: int, stream: str) -> dict[str, Any]:
    """Fine-tune `start` on `exs`; writes the adapter (LoRA) or checkpoint (full)."""
    lora = lora_cfg if train_cfg.mode == "lora" and start.adapter is None else None
    model, tokenizer = load_model(start, base_cfg, mesh=mesh, lora=lora)
    if train_cfg.mode == "full" and start.adapter is not None:
        model = m.merge_lora(model)
    result = train(model, tokenizer, exs, train_cfg, ctx.work, mesh=mesh,
                   key=rng.key_for(seed, stream))
    out = ctx.out / MODEL_DIR
    if train_cfg.mode == "lora":
        m.save_peft_adapter(result.model, out,
                            base_model_name_or_path=base_name(ctx.inputs["base"]))
    else:
        m.save_hf(result.model, out, tokenizer=tokenizer, merge_lora=True)
    info = {"mode": train_cfg.mode, "steps": result.steps, "final_loss": result.final_loss,
            "num_examples": result.num_examples, "num_truncated": result.num_truncated,
            "num_dropped": result.num_dropped}
    write_json_atomic(ctx.out / "train.json", info)
    logs = ctx.out / "logs"
    logs.mkdir(exist_ok=True)
    if result.metrics_path and Path(result.metrics_path).exists():
        shutil.copy(result.metrics_path, logs / "metrics.jsonl")
    return {**info, "tokens_per_sec": result.tokens_per_sec}


def run_sft(ctx: StageContext, *, base_cfg: BaseConfig, task: Task, mesh,
            seed: int) -> dict[str, Any]:
    """In-weight propagation: fine-tune the base on the labeled set -> M1."""
    cfg: SftConfig = ctx.config
    if not cfg.enabled:
        write_json_atomic(ctx.out / "train.json", {"disabled": True})
        return {"disabled": True}
    exs = _sft_examples(task, examples(ctx.inputs["data"] / "labeled.jsonl"))
    return _tune(ctx, base_ref(ctx.inputs["base"]), exs, cfg.train, cfg.lora, base_cfg,
                 mesh=mesh, seed=seed, stream="sft")


def run_index(ctx: StageContext, *, base_cfg: BaseConfig, task,
              mesh) -> dict[str, Any]:
    """In-context propagation: k nearest labeled questions as demonstrations."""
    cfg: IndexStageConfig = ctx.config
    labeled = examples(ctx.inputs["data"] / "labeled.jsonl")
    unlabeled = unlabeled_questions(ctx.inputs["data"] / "unlabeled.jsonl")
    m1 = tuned_ref(ctx.inputs["sft"], base_ref(ctx.inputs["base"]))
    model, tokenizer = load_model(m1, base_cfg, mesh=mesh, merged=True)
    plain = user_prompts(tokenizer, task, unlabeled)
    if cfg.k == 0:
        rows = [{"id": q.id, "text": t, "plain": t, "num_demos": 0}
                for q, t in zip(unlabeled, plain, strict=True)]
        write_jsonl(ctx.out / "prompts.jsonl", rows)
        return {"k": 0}
    fmt = functools.partial(prompts.format_question, task)
    emb_l = embed(model, tokenizer, [fmt(e) for e in labeled], layer=cfg.layer,
                  pooling=cfg.pooling, batch_size=cfg.batch_size, mesh=mesh)
    emb_u = embed(model, tokenizer, [fmt(q) for q in unlabeled], layer=cfg.layer,
                  pooling=cfg.pooling, batch_size=cfg.batch_size, mesh=mesh)
    index = build_index(emb_l, cfg.index)
    idx_QK, score_QK = index.search(emb_u, min(cfg.k, len(labeled)))
    budget = cfg.token_budget or (model.cfg.max_position_embeddings - 64)
    answer = lambda e: prompts.target(task, e.answer, e.options)  # noqa: E731
    demo_prompts = build_demo_prompts(tokenizer, unlabeled, labeled, idx_QK,
                                      format_question=fmt, format_answer=answer,
                                      max_tokens=budget)
    np.save(ctx.out / "labeled_emb.npy", emb_l)
    np.save(ctx.out / "unlabeled_emb.npy", emb_u)
    np.save(ctx.out / "neighbours.npy", idx_QK)
    index.save(ctx.out / "index")
    write_jsonl(ctx.out / "prompts.jsonl",
                [{"id": q.id, "text": p.text, "plain": t, "num_demos": p.num_demos}
                 for q, p, t in zip(unlabeled, demo_prompts, plain, strict=True)])
    used = [p.num_demos for p in demo_prompts]
    return {"k": cfg.k, "index": index.describe(), "mean_demos": float(np.mean(used)),
            "mean_top1_score": float(score_QK[:, 0].mean())}


def run_propose(ctx: StageContext, *, base_cfg: BaseConfig, task, mesh,
                seed: int) -> dict[str, Any]:
    """Collaborators: n responses per unlabeled question, with per-token log-probs.

    Collaborators with the same weights and prompt are the samples of one vmapped pass
    (`num_samples`); each distinct (weights, prompt) group draws from its own named key
    stream, so adding a group does not move another group's samples.
    """
    cfg: ProposeConfig = ctx.config
    unlabeled = {q.id: q for q in unlabeled_questions(ctx.inputs["data"] / "unlabeled.jsonl")}
    rows = read_jsonl(ctx.inputs["index"] / "prompts.jsonl")
    base = base_ref(ctx.inputs["base"])
    refs = {"m1": tuned_ref(ctx.inputs["sft"], base), "base": base}
    specs = cfg.specs()
    groups: dict[tuple[str, bool], list[int]] = {}
    for j, spec in enumerate(specs):
        groups.setdefault(spec, []).append(j)
    by_j: dict[int, list] = {}
    for (weights, icp), members in groups.items():
        model, tokenizer = load_model(refs[weights], base_cfg, mesh=mesh, merged=True)
        texts = [r["text"] if icp else r.get("plain", r["text"]) for r in rows]
        stream = "propose" if len(groups) == 1 else f"propose/{weights}{'+icp' * icp}"
        out = generate(model, tokenizer, texts, cfg.sample, key=rng.key_for(seed, stream),
                       num_samples=len(members), mesh=mesh)
        for k, j in enumerate(members):
            by_j[j] = [samples[k] for samples in out]
        del model
    cands = []
    for i, r in enumerate(rows):
        opts = unlabeled[r["id"]].options
        for j in range(len(specs)):
            s = by_j[j][i]
            cands.append({"qid": r["id"], "collaborator": j, "response": s.text,
                          "answer": task.extract_answer(s.text, opts, rule=cfg.extract),
                          "entropy": float(s.entropy), "finish": s.finish_reason,
                          "logprobs": [float(x) for x in s.logprobs]})
    write_jsonl(ctx.out / "candidates.jsonl", cands)
    answered = sum(c["answer"] is not None for c in cands)
    cut = sum(c["finish"] == "length" for c in cands)
    return {"n": len(specs), "questions": len(rows),
            "collaborators": ["+".join([w] + ["icp"] * i) for w, i in specs],
            "answered_fraction": answered / max(len(cands), 1),
            "cut_at_budget_fraction": cut / max(len(cands), 1),
            "mean_tokens": float(np.mean([len(c["logprobs"]) for c in cands] or [0]))}


def _candidates(path: Path) -> list[selection.Candidate]:
    return [selection.Candidate(c["qid"], c["collaborator"], c["response"], c["answer"],
                                c["entropy"]) for c in read_jsonl(path)]


def run_select(ctx: StageContext, *, base_cfg: BaseConfig, task, mesh,
               seed: int) -> dict[str, Any]:
    """Vote; self-justify the disagreements with M1; keep low-entropy pseudo-labels.

    Reads only the unlabeled questions and the candidates: the gold answers live in
    `held/` of the data stage, which this stage is never given.
    """
    cfg: SelectConfig = ctx.config
    unlabeled = {q.id: q for q in unlabeled_questions(ctx.inputs["data"] / "unlabeled.jsonl")}
    cands = _candidates(ctx.inputs["propose"] / "candidates.jsonl")
    votes = selection.vote(cands, key=task.answer_key)
    todo = selection.needs_reflection(votes) if cfg.reflect else []
    reflections: dict[str, selection.Reflection] = {}
    if todo:
        by_q: dict[str, list[str]] = {}
        for c in sorted(cands, key=lambda c: (c.qid, c.collaborator)):
            by_q.setdefault(c.qid, []).append(c.response)
        m1 = tuned_ref(ctx.inputs["sft"], base_ref(ctx.inputs["base"]))
        model, tokenizer = load_model(m1, base_cfg, mesh=mesh, merged=True)
        texts = [render_prompt(tokenizer, prompts.format_reflection(task, unlabeled[q],
                                                                     by_q[q])) for q in todo]
        outs = generate(model, tokenizer, texts, cfg.reflect_sample,
                        key=rng.key_for(seed, "reflect"), num_samples=1, mesh=mesh)
        for qid, (s,) in zip(todo, outs, strict=True):
            reflections[qid] = selection.Reflection(
                task.extract_answer(s.text, unlabeled[qid].options, rule=cfg.extract),
                float(s.entropy), s.text)
    write_jsonl(ctx.out / "reflections.jsonl",
                [{"qid": q, "answer": r.answer, "entropy": r.entropy, "response": r.response}
                 for q, r in reflections.items()])
    sel = selection.select(cands, reflections, cfg, key=task.answer_key)
    write_json_atomic(ctx.out / "selection.json", sel.to_dict())
    labels = sel.pseudo_labels()
    write_jsonl(ctx.out / "pseudo.jsonl",
                [{**_example_row(unlabeled[q]), "answer": a} for q, a in labels.items()])
    parsed = sum(r.answer is not None for r in reflections.values())
    return {**{k: v for k, v in sel.stats.items() if isinstance(v, int | float | str)},
            "consistent_fraction": 1 - len(todo) / max(len(votes), 1) if cfg.reflect else None,
            "reflected": len(reflections), "selected": len(labels), "message": sel.message,
            "reflection_parse_rate": parsed / len(reflections) if reflections else None}


def run_final(ctx: StageContext, *, base_cfg: BaseConfig, sft_cfg: SftConfig, task,
              mesh, seed: int) -> dict[str, Any]:
    """Final tuning on the selected pseudo-labels (official), labeled + selected, or the
    labeled rows alone (`final.data`), from M1 (official) or the base."""
    cfg: FinalConfig = ctx.config
    if cfg.data not in FINAL_DATA:
        raise UserError(f"final.data={cfg.data!r}; expected one of {FINAL_DATA}")
    exs = (examples(ctx.inputs["data"] / "labeled.jsonl")
           if cfg.data in ("labeled+selected", "labeled") else [])
    pseudo = ([] if cfg.data == "labeled"
              else examples(ctx.inputs["select"] / "pseudo.jsonl"))
    if not exs + pseudo:  # nothing selected: M2 is the model the tuning would start from
        note = "no pseudo-label selected and final.data='selected': no final tuning"
        print(f"[final] {note}", flush=True)
        write_json_atomic(ctx.out / "train.json", {"disabled": True, "reason": note})
        return {"disabled": True, "labeled": 0, "pseudo": 0}
    base = base_ref(ctx.inputs["base"])
    start = tuned_ref(ctx.inputs["sft"], base) if cfg.from_sft else base
    train_cfg = dataclasses.replace(cfg.train, mode=sft_cfg.train.mode)
    metrics = _tune(ctx, start, _sft_examples(task, exs + pseudo), train_cfg, sft_cfg.lora,
                    base_cfg, mesh=mesh, seed=seed, stream="final")
    return {**metrics, "labeled": len(exs), "pseudo": len(pseudo)}


def _answers_key(ctx: StageContext, makers: Sequence[str], *parts: Any) -> str:
    made_by = [read_record(ctx.inputs[n])["output_digest"] for n in ("data", *makers)]
    return answers_key(made_by, *(to_jsonable(p) for p in parts))


def _decode_test(ref: ModelRef, base_cfg: BaseConfig, task: Task, test: list[Example],
                 cfg: EvalConfig, seed: int, mesh) -> list:
    model, tokenizer = load_model(ref, base_cfg, mesh=mesh, merged=True)
    return generate(model, tokenizer, user_prompts(tokenizer, task, test), cfg.sample,
                    key=rng.key_for(seed, "eval"), num_samples=1, mesh=mesh)


def run_eval(ctx: StageContext, *, base_cfg: BaseConfig, task, mesh, seed: int,
             thetas: Sequence[float], select_cfg: SelectConfig) -> dict[str, Any]:
    """Test accuracy and response entropies of vanilla (base), SFT (M1) and SemiEvol (M2)."""
    cfg: EvalConfig = ctx.config
    test = examples(ctx.inputs["data"] / "test.jsonl")
    if cfg.max_rows:
        test = test[:cfg.max_rows]
    base = base_ref(ctx.inputs["base"])
    m1 = tuned_ref(ctx.inputs["sft"], base)
    # Later rounds are given the original base as `vanilla`; their own base is an M2.
    vanilla = base_ref(ctx.inputs["vanilla"]) if "vanilla" in ctx.inputs else base
    refs = {"vanilla": vanilla, "sft": m1, "semievol": tuned_ref(ctx.inputs["final"], m1)}
    makers = {"vanilla": ("vanilla",) if "vanilla" in ctx.inputs else ("base",),
              "sft": ("base", "sft"), "semievol": ("base", "sft", "final")}
    results, preds = {}, []
    for name, ref in refs.items():
        key = _answers_key(ctx, makers[name], task, cfg, base_cfg, seed,
                           None if mesh is None else dict(mesh.shape))
        outs = EVAL_ANSWERS.get(key, functools.partial(_decode_test, ref, base_cfg, task, test,
                                                       cfg, seed, mesh))
        correct, entropies, parsed, cut = [], [], 0, 0
        for ex, (s,) in zip(test, outs, strict=True):
            pred = task.extract_answer(s.text, ex.options, rule=cfg.extract)
            parsed += pred is not None
            cut += s.finish_reason == "length"
            ok = pred is not None and task.is_correct(pred, ex.answer)
            correct.append(ok)
            entropies.append(float(s.entropy))
            preds.append({"model": name, "id": ex.id, "pred": pred, "gold": ex.answer,
                          "correct": ok, "entropy": float(s.entropy), "response": s.text})
        results[name] = {"accuracy": float(np.mean(correct)) if correct else float("nan"),
                         "parse_rate": parsed / len(test) if test else float("nan"),
                         "cut_at_budget": cut / len(test) if test else float("nan"),
                         "entropies": entropies}
    # The one place the unlabeled gold answers are read: scoring the pseudo-labels.
    gold = GoldAnswers(json.loads(
        (ctx.inputs["data"] / "held" / "unlabeled_gold.json").read_text()))
    sel = selection.Selection.from_dict(
        json.loads((ctx.inputs["select"] / "selection.json").read_text()))
    score = selection.score_pseudo_labels(
        sel, gold, _candidates(ctx.inputs["propose"] / "candidates.jsonl"), thetas=thetas,
        is_correct=task.is_correct, key=task.answer_key)
    demos = _demo_agreement(ctx.inputs["index"], ctx.inputs["data"], gold)
    write_json_atomic(ctx.out / "eval.json", {"models": results,
                                              "pseudo_labels": dataclasses.asdict(score),
                                              "demonstrations": demos})
    write_jsonl(ctx.out / "predictions.jsonl", preds)
    return {f"acc_{k}": v["accuracy"] for k, v in results.items()} | {
        f"parse_{k}": v["parse_rate"] for k, v in results.items()} | {
        "pseudo_label_accuracy": score.accuracy_selected,
        "proposal_accuracy": score.accuracy_proposals,
        "majority_accuracy": score.accuracy_majority,
        "consistent_accuracy": score.accuracy_by_source.get(selection.CONSISTENT),
        "reflected_accuracy": score.accuracy_by_source.get(selection.REFLECTED),
        "answered_accuracy": score.accuracy_all,
        "demo_gold_match": demos["gold_match"] if demos else None}


def _demo_agreement(index_dir: Path, data_dir: Path, gold: GoldAnswers) -> dict | None:
    """How often a retrieved demonstration's gold answer equals its unlabeled question's
    (scored after the fact: the method never reads the unlabeled gold)."""
    path = index_dir / "neighbours.npy"
    if not path.exists():
        return None
    idx_QK = np.load(path)
    labeled = examples(data_dir / "labeled.jsonl")
    unlabeled = unlabeled_questions(data_dir / "unlabeled.jsonl")
    pairs = [(labeled[j].answer, gold[q.id]) for q, row in zip(unlabeled, idx_QK, strict=True)
             if q.id in gold for j in row]
    if not pairs:
        return None
    same = sum(a.strip().upper() == g.strip().upper() for a, g in pairs)
    return {"pairs": len(pairs), "gold_match": same / len(pairs), "k": int(idx_QK.shape[1])}
