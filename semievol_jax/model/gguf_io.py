"""GGUF checkpoints (llama.cpp, Ollama, LM Studio): config, dequantized tensors, tokenizer.

The file is read with the `gguf` library (llama.cpp's own reader and dequantization), so
every quantization type it decodes loads here. Tensors come out one at a time under their
HF names and in the HF [out, in] layout, so `hf_io.load_hf` places them exactly as it
places safetensors weights. llama.cpp's converter interleaves the rows of the Q and K
projections (its RoPE pairs dims 2i, 2i+1, HF's pairs i, i+H/2); reading undoes that.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import mmap
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, quants

from semievol_jax.model.config import CheckpointError, LlamaConfig, RopeScaling
from semievol_jax.model.registry import cache_dir
from semievol_jax.model.rope import rope_inv_freq
from semievol_jax.model.safetensors_io import aligned_empty

SUPPORTED_ARCHITECTURES = ("llama",)
SUFFIX = ".gguf"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {  # blk.{i}.<gguf>.weight -> model.layers.{i}.<hf>.weight
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_ROPE_FREQS = "rope_freqs.weight"  # llama3-style per-frequency RoPE factors
_EOS_KEYS = ("eos_token_id", "eot_token_id", "eom_token_id")


def is_gguf(path: str | Path) -> bool:
    """True for a path that names a GGUF file (by its suffix)."""
    return str(path).lower().endswith(SUFFIX)


class _Reader(GGUFReader):
    """GGUFReader whose tensor table errors name the tensor (the library's do not)."""

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_dtype, offset = field.parts
            name = bytes(name_data).decode("utf-8", "replace")
            code = int(raw_dtype[0])
            if code not in GGMLQuantizationType._value2member_map_:
                raise CheckpointError(
                    f"{self.data.filename}: tensor {name!r} has unknown GGML type {code} "
                    f"(gguf {_gguf_version()} knows {len(GGML_QUANT_SIZES)} types)")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(code)]
            end = start_offs + int(offset[0]) + int(np.prod(dims)) * type_size // block
            if end > size:
                raise CheckpointError(
                    f"{self.data.filename}: tensor {name!r} is truncated (its data ends at "
                    f"byte {end}, the file has {size})")
        super()._build_tensors(start_offs, fields)


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def _read(path: str) -> _Reader:
    try:
        return _Reader(path, "r")
    except CheckpointError:
        raise
    except (OSError, ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e


def _stat_key(path: str | Path) -> tuple[str, int, int]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


class _TensorInfo(NamedTuple):
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    data_offset: int
    n_bytes: int
    item_type: Any  # numpy dtype of the stored items (uint8 for block-quantized types)
    item_shape: tuple[int, ...]  # the numpy shape of the stored items


class _Header(NamedTuple):
    fields: dict[str, Any]  # scalar metadata; arrays only by length (as `_Length`)
    tensors: dict[str, _TensorInfo]


class _Length(int):
    """An array-valued metadata key, kept only by its length."""


_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
          GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
          GGMLQuantizationType.I64: np.int64}


@functools.lru_cache(maxsize=4)
def _header(path: str, mtime_ns: int, size: int) -> _Header:
    """Metadata and tensor table of a file, without the parsed vocabulary: the library's
    reader holds ~180 MB of Python objects for a 49k-token vocabulary and takes seconds
    to build, so it is parsed once per file and dropped."""
    reader = _read(path)
    fields: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            fields[key] = _Length(len(field.data))
        else:
            fields[key] = field.contents()
    tensors = {}
    for t in reader.tensors:
        tensors[t.name] = _TensorInfo(
            t.name, t.tensor_type, tuple(int(d) for d in t.shape.tolist()), t.data_offset,
            int(t.n_bytes), t.data.dtype, tuple(t.data.shape))
    return _Header(fields, tensors)


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _meta(header: _Header, key: str, default: Any = None) -> Any:
    return header.fields.get(key, default)


class GGUFCheckpoint:
    """One GGUF file as a Llama checkpoint: `cfg`, and `get(hf_name)` -> float32 [out, in].

    Raises (at construction):
        CheckpointError: unreadable or truncated file, an architecture other than Llama, a
            missing metadata key, or a tensor that a Llama model does not have.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header = _header(*_stat_key(self.path))
        self.data = np.memmap(self.path, mode="r")
        arch = _meta(self.header, "general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(
                f"{self.path}: general.architecture {arch!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        self.arch = arch
        self.tensors = self.header.tensors
        self.cfg = self._config()
        self.gguf_name = self._names()
        self.shapes = self._shapes()
        known = set(self.gguf_name.values()) | {_ROPE_FREQS}
        unexpected = sorted(set(self.tensors) - known)
        if unexpected:
            raise CheckpointError(
                f"{self.path}: tensor {unexpected[0]!r} is not part of a Llama model "
                f"({len(unexpected)} such tensors; biases, MoE experts and vision towers "
                "are not supported)")

    # ------------------------------------------------------------------ metadata

    def _key(self, suffix: str, default: Any = ..., cast: type = int) -> Any:
        key = f"{self.arch}.{suffix}"
        value = _meta(self.header, key)
        if value is None:
            if default is ...:
                raise CheckpointError(f"{self.path}: metadata key {key!r} is missing")
            return default
        if isinstance(value, _Length):
            raise CheckpointError(
                f"{self.path}: metadata key {key!r} is a per-layer list; only uniform "
                "layers are supported")
        return cast(value)

    def _config(self) -> LlamaConfig:
        num_heads = self._key("attention.head_count")
        hidden = self._key("embedding_length")
        head_dim = self._key("attention.key_length", hidden // num_heads)
        if self._key("attention.value_length", head_dim) != head_dim:
            raise CheckpointError(f"{self.path}: key and value head sizes differ")
        if self._key("rope.dimension_count", head_dim) != head_dim:
            raise CheckpointError(
                f"{self.path}: {self.arch}.rope.dimension_count != head size "
                "(partial rotary embeddings are not supported)")
        if self._key("expert_count", 0):
            raise CheckpointError(f"{self.path}: mixture-of-experts models are not supported")
        tokens = _meta(self.header, "tokenizer.ggml.tokens")
        embd = self.tensors.get("token_embd.weight")
        vocab = self._key("vocab_size", None)
        if vocab is None:
            vocab = (int(tokens) if tokens is not None
                     else int(embd.shape[-1]) if embd is not None else None)
        if vocab is None:
            raise CheckpointError(f"{self.path}: no vocabulary size (no {self.arch}.vocab_size,"
                                  " tokenizer.ggml.tokens or token_embd.weight)")
        eos = []
        for key in _EOS_KEYS:
            value = _meta(self.header, f"tokenizer.ggml.{key}")
            if value is not None and int(value) not in eos:
                eos.append(int(value))
        bos = _meta(self.header, "tokenizer.ggml.bos_token_id")
        pad = _meta(self.header, "tokenizer.ggml.padding_token_id")
        theta = self._key("rope.freq_base", 10000.0, float)
        cfg = LlamaConfig(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=self._key("feed_forward_length"),
            num_layers=self._key("block_count"),
            num_heads=num_heads,
            num_kv_heads=self._key("attention.head_count_kv", num_heads),
            head_dim=head_dim,
            rms_norm_eps=self._key("attention.layer_norm_rms_epsilon", 1e-5, float),
            rope_theta=theta,
            rope_scaling=self._rope_scaling(),
            max_position_embeddings=self._key("context_length", 2048),
            tie_word_embeddings="output.weight" not in self.tensors,
            bos_token_id=None if bos is None else int(bos),
            eos_token_id=tuple(eos),
            pad_token_id=None if pad is None else int(pad),
            torch_dtype="float32",
        )
        self._check_rope_freqs(cfg)
        return cfg

    def _rope_scaling(self) -> RopeScaling | None:
        kind = self._key("rope.scaling.type", "none", str)
        if kind == "none" and _ROPE_FREQS in self.tensors:
            # llama.cpp stores Llama 3.1 scaling as per-frequency factors; the standard
            # parameters are recovered here and checked against the factors below.
            factor = float(np.max(self._raw(_ROPE_FREQS)))
            original = self._key("rope.scaling.original_context_length", 8192)
            return RopeScaling("llama3", factor, 1.0, 4.0, original)
        if kind == "none":
            return None
        if kind == "linear":
            return RopeScaling("linear", self._key("rope.scaling.factor", cast=float))
        raise CheckpointError(
            f"{self.path}: {self.arch}.rope.scaling.type {kind!r} is not supported "
            "(supported: none, linear, llama3 factors)")

    def _check_rope_freqs(self, cfg: LlamaConfig) -> None:
        if _ROPE_FREQS not in self.tensors:
            return
        factors = self._raw(_ROPE_FREQS).reshape(-1)
        plain = rope_inv_freq(LlamaConfig(**{**cfg.__dict__, "rope_scaling": None}))
        if factors.shape != plain.shape:
            raise CheckpointError(f"{self.path}: tensor {_ROPE_FREQS!r} has {factors.size} "
                                  f"factors, expected {plain.size}")
        want = plain / factors
        if not np.allclose(rope_inv_freq(cfg), want, rtol=1e-5, atol=0):
            raise CheckpointError(
                f"{self.path}: tensor {_ROPE_FREQS!r} holds RoPE factors that are not Llama 3 "
                "scaling (custom factors are not supported)")

    # ------------------------------------------------------------------ tensors

    def _names(self) -> dict[str, str]:
        """HF name -> GGUF name of every tensor the model needs."""
        names = {hf: g for g, hf in _GLOBAL_NAMES.items()}
        if self.cfg.tie_word_embeddings:
            del names["lm_head.weight"]
        for i in range(self.cfg.num_layers):
            for g, hf in _BLOCK_NAMES.items():
                names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
        return names

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """HF name -> the [out, in] (or [D]) shape HF stores it with."""
        c = self.cfg
        D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        block = {"q_proj": (q, D), "k_proj": (kv, D), "v_proj": (kv, D), "o_proj": (D, q),
                 "gate_proj": (F, D), "up_proj": (F, D), "down_proj": (D, F),
                 "input_layernorm": (D,), "post_attention_layernorm": (D,)}
        shapes = {}
        for hf in self.gguf_name:
            if hf.startswith("model.layers."):
                shapes[hf] = block[hf.split(".")[-2]]
            else:
                shapes[hf] = (D,) if hf == "model.norm.weight" else (V, D)
        return shapes

    def where(self, hf_name: str) -> str:
        """The file and GGUF tensor behind `hf_name` (for error messages)."""
        return f"{self.path} (tensor {self.gguf_name.get(hf_name, hf_name)!r})"

    def get(self, hf_name: str) -> np.ndarray:
        """The tensor as float32 in the HF layout, dequantized by the gguf library.

        Raises:
            CheckpointError: the tensor is missing, has the wrong shape, or is of a type the
                gguf library cannot dequantize; the message names the GGUF tensor.
        """
        name = self.gguf_name.get(hf_name)
        if name is None or name not in self.tensors:
            raise CheckpointError(f"{self.path}: tensor {name or hf_name!r} is missing")
        t = self.tensors[name]
        shape = tuple(reversed(t.shape))  # GGUF lists dims fastest first
        want = self.shapes[hf_name]
        if shape != want:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has shape {shape}, expected {want}")
        try:
            value = self._raw(name)
        except NotImplementedError as e:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} is {t.tensor_type.name}, which gguf "
                f"{_gguf_version()} cannot dequantize ({e})") from e
        value = value.reshape(want)
        if hf_name.endswith("q_proj.weight"):
            value = _unpermute(value, self.cfg.num_heads)
        elif hf_name.endswith("k_proj.weight"):
            value = _unpermute(value, self.cfg.num_kv_heads)
        elif isinstance(value, np.memmap) or value.dtype != np.float32:
            value = _aligned_copy(value.astype(np.float32, copy=False))
        self._release(t)
        return value

    def _raw(self, name: str) -> np.ndarray:
        """The gguf library's dequantization of one tensor's bytes (float32, numpy order)."""
        t = self.tensors[name]
        items = self.data[t.data_offset:t.data_offset + t.n_bytes].view(t.item_type)
        return quants.dequantize(items.reshape(t.item_shape), t.tensor_type)

    def _release(self, t: _TensorInfo) -> None:
        """Drops the file pages of a tensor already read, so the mapped file does not add
        its size to the loader's resident memory."""
        mm = getattr(self.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        start = t.data_offset // page * page
        end = t.data_offset + t.n_bytes
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass


def _unpermute(w_OI: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: per head, rows (2i, 2i+1) -> (i, i+H/2)."""
    out, rest = w_OI.shape[0], w_OI.shape[1:]
    half = out // heads // 2
    w = w_OI.reshape(heads, half, 2, *rest).swapaxes(1, 2)
    return _aligned_copy(w.reshape(w_OI.shape))


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy in a buffer that XLA:CPU adopts without copying again."""
    buf = aligned_empty(a.nbytes).view(a.dtype).reshape(a.shape)
    np.copyto(buf, a)
    return buf


# ---------------------------------------------------------------------------------------
# Tokenizer


_TOKENIZER_KEYS = {  # tokenizer.<key> -> the key transformers' GGUF converter reads
    "ggml.model": "tokenizer_type",
    "ggml.pre": "pre_tokenizer_type",
    "ggml.tokens": "tokens",
    "ggml.scores": "scores",
    "ggml.token_type": "token_type",
    "ggml.merges": "merges",
    "ggml.precompiled_charsmap": "precompiled_charsmap",
    "ggml.bos_token_id": "bos_token_id",
    "ggml.eos_token_id": "eos_token_id",
    "ggml.unknown_token_id": "unk_token_id",
    "ggml.padding_token_id": "pad_token_id",
    "ggml.add_space_prefix": "add_prefix_space",
}
_SPECIALS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
             "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def load_gguf_tokenizer(path: str | Path):
    """The file's tokenizer (vocabulary, merges, special tokens, chat template) as a
    `transformers` fast tokenizer, built by transformers' own GGUF tokenizer converter.

    Raises:
        CheckpointError: the file has no tokenizer, or one of a kind transformers cannot
            build.
    """
    # Built once per file (parsing the vocabulary and merges takes seconds); each caller
    # gets its own copy, free to change padding side or special tokens.
    return copy.deepcopy(_tokenizer(*_stat_key(path)))


TOKENIZER_CACHE = "tokenizers"  # under registry.cache_dir()


def tokenizer_cache_entry(path: str | Path) -> Path:
    """Where the tokenizer built from `path` is kept as `tokenizer.json`: a folder named
    by the SHA-256 of the file's metadata (every byte before the first tensor's data:
    the vocabulary, merges and template live there) and the transformers and tokenizers
    versions that convert it."""
    from importlib.metadata import version

    path = str(Path(path).resolve())
    header = _header(*_stat_key(path))
    end = min((t.data_offset for t in header.tensors.values()), default=None)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if end is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(end))
    for lib in ("transformers", "tokenizers"):
        h.update(f"\0{lib}=={version(lib)}".encode())
    return cache_dir() / TOKENIZER_CACHE / h.hexdigest()[:32]


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str, mtime_ns: int, size: int):
    """The tokenizer from its cache entry, built and saved there when absent. Building
    converts the whole vocabulary and merges in Python (3.2 s for SmolLM2's 49k tokens);
    the saved `tokenizer.json` loads in 0.24 s (results/bench/load.json) and encodes
    identically (tests/test_model_gguf.py)."""
    from transformers import PreTrainedTokenizerFast

    entry = tokenizer_cache_entry(path)
    if (entry / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(entry))
        except (OSError, ValueError) as e:  # an entry damaged on disk: build it again
            warnings.warn(f"{entry}: unreadable cached tokenizer ({e}); rebuilding it",
                          stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
    tok = _build_tokenizer(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    except OSError:  # a read-only cache: the built tokenizer serves this process
        return tok
    try:
        tok.save_pretrained(str(tmp))
        os.replace(tmp, entry)  # whole or absent; a process that saved first wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / "tokenizer.json").is_file():
            return tok
    # Every process, the first included, encodes with the tokenizer the entry holds.
    return PreTrainedTokenizerFast.from_pretrained(str(entry))


def _build_tokenizer(path: str):
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    reader = _read(path)
    arch = _field(reader, "general.architecture")
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise CheckpointError(f"{path}: no tokenizer in the file (tokenizer.ggml.tokens)")
    spec = {name: _field(reader, f"tokenizer.{key}") for key, name in _TOKENIZER_KEYS.items()
            if f"tokenizer.{key}" in reader.fields}
    kwargs: dict[str, Any] = {}
    template = _field(reader, "tokenizer.chat_template")
    if template is not None:
        kwargs["chat_template"] = template
    for key in ("add_bos_token", "add_eos_token"):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            kwargs[key] = bool(value)
    if spec.get("tokenizer_type") == "llama":
        kwargs.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece
    for name, key in _SPECIALS.items():
        token_id = _field(reader, f"tokenizer.ggml.{key}")
        if token_id is not None:
            kwargs[name] = spec["tokens"][int(token_id)]
    try:
        backend, extra = convert_gguf_tokenizer(arch, spec)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot build its tokenizer ({e})") from e
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs, **extra)
