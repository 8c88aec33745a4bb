"""TrainConfig: every knob of one fine-tuning run, defaulting to the official SemiEvol SFT."""

from __future__ import annotations

import dataclasses
import math

from semievol_jax.files import DIGEST_OMITS

# model/llama.py REMAT_POLICIES and model/lora.py LORA_GRADS by name (this module stays
# free of jax imports)
REMAT_NAMES = ("none", "dots", "projections", "attention", "full")
LORA_GRAD_NAMES = ("autodiff", "direct")


class TrainConfigError(ValueError):
    """A training config value that cannot work (names the field and the value)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One SFT run. Defaults = the official SemiEvol config (LLaMA-Factory LoRA SFT)."""

    mode: str = "lora"  # "lora": train only nnx.LoRAParam; "full": train every nnx.Param
    learning_rate: float = 1e-4  # peak learning rate (final tuning uses 1e-6)
    epochs: int = 2  # passes over the training set
    schedule: str = "cosine"  # "cosine" | "linear" | "constant" decay after warmup
    warmup_ratio: float = 0.1  # fraction of total steps with linear warmup from 0
    batch_size: int = 8  # effective (global) batch in sequences per optimizer step
    micro_batch_size: int | None = None  # sequences per forward pass; None = batch_size
    cutoff_len: int = 1024  # max tokens per example (prompt + response); longer are cut
    # Padded lengths, 1.5x apart: at most a third of a batch is padding, for a few more
    # compiled programs than powers of two.
    length_buckets: tuple[int, ...] = (64, 96, 128, 192, 256, 384, 512, 768, 1024)
    # Several examples per row as separate segments (train/packing.py): the same loss
    # and gradients with less padding; rows up to pack_length tokens
    pack: bool = False
    # The longest packed row (never below an example's bucket; with a program_cost, a
    # step may share a longer row that another step of the run needs)
    pack_length: int = 1024
    # Packed: the price of one more step shape (one more compiled program) in the
    # packer's cost unit, padded row tokens (packing.plan_shapes); > 0 plans the run's
    # shapes at once, so its steps share a few programs. 0: each step picks its own
    # shape, as the committed results were made
    program_cost: float = dataclasses.field(default=0.0, metadata={DIGEST_OMITS: 0.0})
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_b1: float = 0.9  # AdamW beta1
    adam_b2: float = 0.999  # AdamW beta2
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # global-norm gradient clipping; 0 = off
    compute_dtype: str | None = "bfloat16"  # matmul dtype (None: the model's); masters stay f32
    # What each layer keeps for the backward pass (model/llama.py REMAT_POLICIES): none |
    # dots | projections (recompute attention scores) | full (recompute each layer);
    # false/true, as older configs say, read as none/dots
    remat: str | bool = "none"
    # How the backward pass forms the LoRA B gradients (model/lora.py LORA_GRADS):
    # "direct" is faster on XLA:CPU and rounds differently from "autodiff", with which
    # the committed results were made
    lora_grad: str = dataclasses.field(default="autodiff",
                                       metadata={DIGEST_OMITS: "autodiff"})
    shuffle: bool = True  # seeded permutation of the examples each epoch
    max_steps: int | None = None  # stop after this many optimizer steps (None = all epochs)
    checkpoint_every: int = 100  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    async_checkpoint: bool = True  # write checkpoints in a background thread
    adapter_only_checkpoint: bool = True  # LoRA: checkpoint only trainable params (base frozen)
    log_every: int = 1  # optimizer steps between metrics lines
    tensorboard: bool = True  # also write TensorBoard events (tensorboardX)
    progress: bool = True  # tqdm progress bar on the main process

    @property
    def micro(self) -> int:
        """Sequences per forward pass."""
        return self.micro_batch_size or self.batch_size

    @property
    def accum_steps(self) -> int:
        """Microbatches accumulated per optimizer step."""
        return self.batch_size // self.micro

    @property
    def remat_policy(self) -> str:
        """`remat` as a REMAT_POLICIES name."""
        if isinstance(self.remat, bool):
            return "dots" if self.remat else "none"
        return self.remat

    def validate(self) -> TrainConfig:
        """Raise TrainConfigError naming the first bad field; return self when fine."""
        lr = self.learning_rate
        if not isinstance(lr, int | float) or math.isnan(lr) or math.isinf(lr) or lr <= 0:
            raise TrainConfigError(f"train.learning_rate must be a finite number > 0, got {lr!r}")
        if self.mode not in ("lora", "full"):
            raise TrainConfigError(f"train.mode must be 'lora' or 'full', got {self.mode!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise TrainConfigError(f"train.schedule must be cosine|linear|constant, got "
                                   f"{self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.epochs < 1:
            raise TrainConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.micro < 1 or self.batch_size % self.micro:
            raise TrainConfigError(
                f"train.batch_size={self.batch_size} must be a positive multiple of "
                f"train.micro_batch_size={self.micro_batch_size}"
            )
        if self.pack_length < 2:
            raise TrainConfigError(f"train.pack_length must be >= 2, got {self.pack_length}")
        if self.cutoff_len < 2:
            raise TrainConfigError(f"train.cutoff_len must be >= 2, got {self.cutoff_len}")
        pc = self.program_cost
        if not isinstance(pc, int | float) or math.isnan(pc) or math.isinf(pc) or pc < 0:
            raise TrainConfigError(f"train.program_cost must be a finite number >= 0, got "
                                   f"{pc!r}")
        if self.remat_policy not in REMAT_NAMES:
            raise TrainConfigError(f"train.remat must be one of {'|'.join(REMAT_NAMES)}, got "
                                   f"{self.remat!r}")
        if self.lora_grad not in LORA_GRAD_NAMES:
            raise TrainConfigError(f"train.lora_grad must be one of {'|'.join(LORA_GRAD_NAMES)}, "
                                   f"got {self.lora_grad!r}")
        if self.compute_dtype not in (None, "float32", "bfloat16", "float16"):
            raise TrainConfigError(f"train.compute_dtype must be float32|bfloat16|float16, got "
                                   f"{self.compute_dtype!r}")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise TrainConfigError("train.max_grad_norm and train.weight_decay must be >= 0")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise TrainConfigError("train.checkpoint_every and train.keep_checkpoints must be >= 1")
        return self
