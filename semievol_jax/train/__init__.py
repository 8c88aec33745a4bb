"""Sharded, preemption-safe supervised fine-tuning (SemiEvol's IWP and final tuning)."""

from semievol_jax.train.checkpoint import CheckpointMismatchError
from semievol_jax.train.config import TrainConfig, TrainConfigError
from semievol_jax.train.data import DataError, SFTExample
from semievol_jax.train.loop import NonFiniteLossError, TrainResult, train
from semievol_jax.train.step import ModelSetupError, masked_cross_entropy

__all__ = [
    "CheckpointMismatchError",
    "DataError",
    "ModelSetupError",
    "NonFiniteLossError",
    "SFTExample",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "masked_cross_entropy",
    "train",
]
