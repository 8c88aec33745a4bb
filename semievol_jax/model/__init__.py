"""Flax NNX Llama with LoRA, a KV cache, and Hugging Face / GGUF / PEFT checkpoint I/O."""

from semievol_jax.model.config import CheckpointError, LlamaConfig, RopeScaling
from semievol_jax.model.gguf_io import GGUFCheckpoint, load_gguf_tokenizer
from semievol_jax.model.hf_io import load_hf, load_tokenizer, open_checkpoint, save_hf
from semievol_jax.model.kv_cache import KVCache, init_cache
from semievol_jax.model.llama import Llama, ModelOutput, set_causal_block
from semievol_jax.model.lora import LoraConfig, merge_lora
from semievol_jax.model.matmul import set_matmul_dtype
from semievol_jax.model.peft_io import load_peft_adapter, lora_config_from_peft, save_peft_adapter
from semievol_jax.model.tiny import make_tiny_checkpoint, train_tokenizer, write_hf_checkpoint

__all__ = [
    "CheckpointError",
    "GGUFCheckpoint",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "LoraConfig",
    "ModelOutput",
    "RopeScaling",
    "init_cache",
    "load_gguf_tokenizer",
    "load_hf",
    "load_peft_adapter",
    "load_tokenizer",
    "lora_config_from_peft",
    "make_tiny_checkpoint",
    "merge_lora",
    "open_checkpoint",
    "save_hf",
    "save_peft_adapter",
    "set_causal_block",
    "set_matmul_dtype",
    "train_tokenizer",
    "write_hf_checkpoint",
]
