"""The optimizer: AdamW on a warmup + decay schedule, with global-norm clipping."""

from __future__ import annotations

import math

import optax

from semievol_jax.train.config import TrainConfig


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """Linear-warmup length: ceil(warmup_ratio * total), as Hugging Face's Trainer does."""
    return math.ceil(cfg.warmup_ratio * total_steps)


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per optimizer step: 0 -> peak over warmup, then cosine/linear/constant.

    The decay reaches 0 at ``total_steps`` (HF ``get_cosine_schedule_with_warmup``).
    """
    cfg.validate()
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    lr, warm = cfg.learning_rate, warmup_steps(cfg, total_steps)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(total_steps, warm + 1))
    decay_len = max(total_steps - warm, 1)
    after = (optax.linear_schedule(lr, 0.0, decay_len) if cfg.schedule == "linear"
             else optax.constant_schedule(lr))
    warmup = optax.linear_schedule(0.0, lr, warm) if warm else optax.constant_schedule(lr)
    return optax.join_schedules([warmup, after], [warm])


def clipped_adamw(schedule: optax.Schedule, *, b1: float, b2: float, eps: float,
                  weight_decay: float, max_grad_norm: float) -> optax.GradientTransformation:
    """Clip by global norm (``max_grad_norm`` 0: no clipping), then AdamW (decoupled
    weight decay) on ``schedule``: the optimizer of every training routine here."""
    tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
    return tx


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """``clipped_adamw`` on ``make_schedule``, with the config's AdamW settings.

    Gradient accumulation is done inside the train step (microbatch scan), not here,
    so one optimizer update = one call of the step function.
    """
    return clipped_adamw(make_schedule(cfg, total_steps), b1=cfg.adam_b1, b2=cfg.adam_b2,
                         eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                         max_grad_norm=cfg.max_grad_norm)
