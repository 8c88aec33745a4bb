"""``train``: the fine-tuning loop (data -> sharded steps -> metrics, checkpoints, resume)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from semievol_jax import rng, sharding
from semievol_jax.files import to_jsonable
from semievol_jax.train import checkpoint as ckpt
from semievol_jax.train import step as step_lib
from semievol_jax.train.config import TrainConfig
from semievol_jax.train.data import Batch, SFTBatcher, SFTExample, tokenize_examples
from semievol_jax.train.optim import make_optimizer, make_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run did. The model passed to ``train`` holds the trained params."""

    model: nnx.Module  # the same model object, trainable params updated in place
    steps: int  # optimizer steps completed in total (including before a resume)
    total_steps: int  # steps the config asked for
    losses: list[float]  # loss per step run in this call
    final_loss: float  # loss of the last step
    resumed_from: int | None  # checkpoint step this call resumed from, None if fresh
    num_examples: int  # examples trained on (after dropping fully truncated ones)
    num_truncated: int  # examples cut at cutoff_len
    num_dropped: int  # examples with no response token left after the cut
    tokens_per_sec: float  # non-padding input tokens per second (this call, after compile)
    checkpoint_dir: Path  # orbax checkpoints of this run
    metrics_path: Path  # one JSON line per logged step


def _data_seed(key: jax.Array) -> int:
    return int(jax.random.bits(rng.subkey(key, "data"), (), jnp.uint32))


def _global_batch(batch: Batch, shardings: Batch) -> Batch:
    return Batch(*(sharding.make_global_batch(x, s, batch_axis=1)
                   for x, s in zip(dataclasses.astuple(batch), dataclasses.astuple(shardings),
                                   strict=True)))


class _Logger:
    """Metrics JSONL + TensorBoard + tqdm, on the main process only."""

    def __init__(self, work_dir: Path, cfg: TrainConfig, total: int, start: int):
        self.main = sharding.is_main_process()
        self.path = work_dir / "metrics.jsonl"
        self.tb = self.bar = None
        if not self.main:
            return
        if self.path.exists():
            # A resumed run redoes the steps after its checkpoint: drop their old lines.
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= start]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self.file = self.path.open("a")
        if cfg.tensorboard:  # optional writers: imported only when switched on
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(work_dir / "tensorboard"))
        if cfg.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, desc="train", unit="step")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.main:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                                 tok_s=f"{metrics['tokens_per_sec']:.0f}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if not self.main:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def train(
    model: nnx.Module,
    tokenizer: Any,
    examples: Sequence[SFTExample],
    cfg: TrainConfig,
    work_dir: Path,
    *,
    mesh: Mesh,
    key: jax.Array,
) -> TrainResult:
    """Fine-tune ``model`` on ``examples`` (LoRA or full), resuming if ``work_dir`` has a run.

    Args:
      model: a Flax NNX Llama (with LoRA params in LoRA mode); updated in place.
      tokenizer: its tokenizer (chat template used to render the examples).
      examples: the SFT pairs.
      cfg: the run's TrainConfig.
      work_dir: where checkpoints, metrics.jsonl and TensorBoard events go.
      mesh: the device mesh (``sharding.make_mesh``).
      key: the run's key (``rng.key_for(seed, "train")``): data order and dropout.

    Returns:
      TrainResult.

    Raises:
      TrainConfigError: a bad config value (e.g. learning rate <= 0 or NaN).
      DataError: an empty training set or unusable examples.
      NonFiniteLossError: NaN/inf loss or gradient; names the step, keeps the last
        good checkpoint.
    """
    cfg.validate()
    work_dir = Path(work_dir)
    data = tokenize_examples(tokenizer, examples, cfg.cutoff_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The split's graphdef is a snapshot: train mode (LoRA dropout on) and the compute
    # dtype are set only for it, and the caller's model is left as it was.
    old_dtypes = step_lib.set_compute_dtype(model, cfg.compute_dtype)
    model.train()
    try:
        split = step_lib.split_model(model, cfg.mode)
    finally:
        model.eval()
        step_lib.restore_compute_dtype(old_dtypes)

    manager = ckpt.make_manager(work_dir / "checkpoints", keep=cfg.keep_checkpoints,
                                async_save=cfg.async_checkpoint)
    # The data seed is derived from the caller's key; a resumed run uses the saved key.
    seed0 = _data_seed(key)
    batcher = SFTBatcher(data, batch_size=cfg.batch_size, micro_batch_size=cfg.micro,
                         cutoff_len=cfg.cutoff_len, buckets=cfg.length_buckets, seed=seed0,
                         shuffle=cfg.shuffle, pad_id=pad_id, pack=cfg.pack,
                         pack_length=cfg.pack_length, row_multiple=sharding.batch_ways(mesh),
                         attention_cost=_attention_cost(model),
                         program_cost=cfg.program_cost)
    total = batcher.steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    batcher.plan(total)
    tx = make_optimizer(cfg, total)
    schedule = make_schedule(cfg, total)
    state_sh = step_lib.state_shardings(split, tx, mesh)
    rest = step_lib.cast_rest(split.rest, cfg.compute_dtype)
    rest_sh = sharding.state_shardings(rest, mesh)
    rest = sharding.put(rest, rest_sh)

    # Fields that change the trained numbers; logging/checkpoint cadence may change on resume.
    cosmetic = {"checkpoint_every", "keep_checkpoints", "async_checkpoint", "log_every",
                "tensorboard", "progress"}
    cfg_digest = json.dumps({k: v for k, v in to_jsonable(cfg).items()
                             if k not in cosmetic}, sort_keys=True, default=str)
    expect = {"data_digest": data.digest, "mode": cfg.mode, "total_steps": total,
              "params": sorted(split.params), "config": cfg_digest}
    abstract = {"params": split.params,
                "opt_state": jax.eval_shape(tx.init, split.params),
                "step": jax.ShapeDtypeStruct((), jnp.int32)}
    state, key, meta = ckpt.restore_or_init(
        manager, lambda: step_lib.init_train_state(split, tx, state_sh), abstract, state_sh,
        key, expect)
    resumed_from = None if meta is None else int(meta["position"]["step"])
    if meta is not None:
        batcher.reseed(_data_seed(key))
    start = int(jax.device_get(state["step"]))

    step_fn = step_lib.make_train_step(split, tx, cfg, mesh, state_sh, rest_sh)
    key = sharding.put(key, sharding.replicated(mesh))
    batch_sh = step_lib.batch_shardings(mesh)
    process = (jax.process_index(), jax.process_count()) if jax.process_count() > 1 else None
    logger = _Logger(work_dir, cfg, total, start)
    losses: list[float] = []
    # A run resumed from its last step trains no step: its final loss is the checkpoint's.
    resumed_loss = None if meta is None else meta.get("last_loss")
    last_saved = resumed_from
    tok_count, tok_time = 0.0, 0.0

    def save(at: int) -> None:
        nonlocal last_saved
        meta = {"position": batcher.position(at), "data_digest": data.digest, "mode": cfg.mode,
                "total_steps": total, "params": sorted(split.params), "config": cfg_digest,
                "last_loss": losses[-1] if losses else resumed_loss}
        ckpt.save(manager, at, state, key, meta)
        last_saved = at

    try:
        for s in range(start, total):
            batch = _global_batch(batcher.batch_at(s, process), batch_sh)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, rest, batch, key)
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            dt = time.perf_counter() - t0
            if s > start:  # the first step of a call includes compilation
                tok_count, tok_time = tok_count + m["input_tokens"], tok_time + dt
            bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(m[k])]
            if bad:
                manager.wait_until_finished()
                where = (f"step {last_saved} in {manager.directory}" if last_saved is not None
                         else "none written yet")
                values = ", ".join(f"{k}={m[k]}" for k in bad)
                raise NonFiniteLossError(
                    f"non-finite {values} at optimizer step {s + 1} of {total}; training "
                    f"stopped, nothing saved for this step. Last good checkpoint: {where}"
                )
            losses.append(m["loss"])
            m["lr"] = float(schedule(s))
            m["tokens_per_sec"] = m["input_tokens"] / dt if dt > 0 else 0.0
            m["epoch"] = s / batcher.steps_per_epoch
            if (s + 1) % cfg.log_every == 0 or s + 1 == total:
                logger.log(s + 1, m)
            logger.advance()
            if (s + 1) % cfg.checkpoint_every == 0 or s + 1 == total:
                save(s + 1)
        manager.wait_until_finished()
    finally:
        logger.close()

    _write_back(model, split, state["params"], cfg.mode)
    return TrainResult(
        model=model, steps=int(jax.device_get(state["step"])), total_steps=total, losses=losses,
        final_loss=losses[-1] if losses else
        (float("nan") if resumed_loss is None else float(resumed_loss)),
        resumed_from=resumed_from,
        num_examples=len(data), num_truncated=data.num_truncated, num_dropped=data.num_dropped,
        tokens_per_sec=tok_count / tok_time if tok_time > 0 else 0.0,
        checkpoint_dir=Path(manager.directory), metrics_path=work_dir / "metrics.jsonl",
    )


def _attention_cost(model: nnx.Module) -> float:
    """Attention FLOPs per token per key position over the projections' FLOPs per token
    (2 D / one block's matmul parameters): what a longer packed row costs."""
    cfg = getattr(model, "cfg", None)
    try:
        d, f = cfg.hidden_size, cfg.intermediate_size
        qkvo = d * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
        return 2 * d / (qkvo + 3 * d * f)
    except AttributeError:
        return 0.0


def _write_back(model: nnx.Module, split: step_lib.SplitModel, params: dict, mode: str) -> None:
    """Put trained params back into ``model`` (same dtype as before training)."""
    _, trainable, _ = nnx.split(model, step_lib.trainable_filter(mode), ...)
    flat = dict(nnx.to_flat_state(trainable))
    for k, path in split.paths.items():
        var = flat[path]
        var.set_value(params[k].astype(var.get_value().dtype))
    nnx.update(model, trainable)


def param_checksum(model: nnx.Module) -> np.ndarray:
    """All nnx.Param values of a model, flattened and concatenated (for equality tests)."""
    leaves = [np.asarray(jax.device_get(v)).ravel().astype(np.float64)
              for _, v in sorted(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                                 key=lambda kv: str(kv[0]))]
    return np.concatenate(leaves) if leaves else np.zeros(0)
