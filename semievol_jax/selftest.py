"""`semievol selftest`: small fixed programs covering what the pipeline computes, digested.

A reviewer runs it before a long rerun: if every program's sha256 equals the committed
one for this CPU mode, the machine computes what the committed results were made with;
the first program that differs is named, with the CPU kinds that made the committed
digests. The programs: a Llama forward pass, a LoRA and a full fine-tuning step (AdamW),
sampling M continuations with per-token log-probs from the KV-cached decode loop, a
mean-pooled embedding, and a ScaNN build and search. Inputs are drawn from named seeds;
shapes are small (seconds each) but wide enough to use every vector path XLA emits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RECORDS = Path("results/repro")  # one JSON per CPU kind this was run on

_SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_layers=2,
              num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10000.0,
              max_position_embeddings=256, eos_token_id=(1,))
_B, _T = 4, 48


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _model(lora: bool):
    from flax import nnx

    from semievol_jax.model import Llama, LlamaConfig, LoraConfig

    cfg = LlamaConfig(**_SHAPE)
    lora_cfg = LoraConfig(rank=8, alpha=16.0, dropout=0.0) if lora else None
    model = Llama(cfg, lora=lora_cfg, rngs=nnx.Rngs(7))
    if lora:  # B != 0, so the adapters change the forward pass
        import jax

        nnx.update(model, jax.tree.map(lambda x: x + 0.01, nnx.state(model, nnx.LoRAParam)))
    return model


def _tokens() -> np.ndarray:
    from semievol_jax import rng

    return rng.numpy_rng(0, "selftest").integers(2, _SHAPE["vocab_size"], (_B, _T)).astype(
        np.int32)


def program_forward() -> str:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = _model(lora=True)
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, tokens):
        m = nnx.merge(graphdef, state)
        return m(tokens, jnp.broadcast_to(jnp.arange(_T), tokens.shape)).logits_BTV

    return _digest(fwd(state, _tokens()))


def _train_step(mode: str) -> str:
    import jax.numpy as jnp

    from semievol_jax import rng, sharding
    from semievol_jax.train import step as step_lib
    from semievol_jax.train.config import TrainConfig
    from semievol_jax.train.data import Batch, score_positions
    from semievol_jax.train.optim import make_optimizer

    model = _model(lora=mode == "lora")
    tc = TrainConfig(mode=mode, batch_size=_B, learning_rate=1e-3, compute_dtype=None,
                     warmup_ratio=0.0)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    split = step_lib.split_model(model, mode)
    tx = make_optimizer(tc, 10)
    state_sh = step_lib.state_shardings(split, tx, mesh)
    rest = sharding.put(split.rest, sharding.state_shardings(split.rest, mesh))
    fn = step_lib.make_train_step(split, tx, tc, mesh, state_sh,
                                  sharding.state_shardings(rest, mesh))
    tokens = _tokens()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    loss_mask = np.zeros_like(inputs, bool)
    loss_mask[:, _T // 2:] = True
    at, mask = score_positions(loss_mask)
    ones = np.ones_like(inputs, bool)
    pos = np.broadcast_to(np.arange(_T - 1, dtype=np.int32), inputs.shape).copy()
    batch = Batch(inputs[None], targets[None], loss_mask[None], ones[None], pos[None],
                  at[None], mask[None])
    batch = sharding.put(batch, step_lib.batch_shardings(mesh))
    state = step_lib.init_train_state(split, tx, state_sh)
    key = rng.key_for(0, "selftest")
    for _ in range(2):
        state, metrics = fn(state, rest, batch, key)
    leaves = [state["params"][k] for k in sorted(state["params"])]
    return _digest(metrics["loss"], metrics["grad_norm"], *[jnp.asarray(x) for x in leaves])


def program_lora_step() -> str:
    return _train_step("lora")


def program_full_step() -> str:
    return _train_step("full")


def program_sample() -> str:
    import jax
    import jax.numpy as jnp

    from semievol_jax.generate import decode as decode_lib
    from semievol_jax.generate.sampling import SampleConfig
    from semievol_jax.generate.stopping import StopTables

    model = _model(lora=False)
    V = _SHAPE["vocab_size"]
    eos = np.zeros(V, bool)
    eos[1] = True
    none = np.zeros((1, V), bool)
    tables = StopTables(jnp.asarray(eos), jnp.zeros(V, bool), jnp.asarray(none),
                        jnp.asarray(none))
    tokens = _tokens()[:, :16]
    valid = np.ones_like(tokens, bool)
    valid[0, :5] = False  # one left-padded prompt
    keys = decode_lib.sample_keys(jax.random.key(3), jnp.arange(_B, dtype=jnp.int32), 4)
    graphdef, state = decode_lib.split_model(model)
    cfg = SampleConfig(temperature=1.0, top_p=0.95, max_new_tokens=16, stop=())
    out = decode_lib.decode(graphdef, state, jnp.asarray(tokens), jnp.asarray(valid), keys,
                            tables, cfg)
    return _digest(out.tokens_BMN, out.logprobs_BMN, out.sample_logprobs_BMN, out.length_BM)


def program_embed() -> str:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = _model(lora=False)
    graphdef, state = nnx.split(model)

    @jax.jit
    def emb(state, tokens):
        m = nnx.merge(graphdef, state)
        h = m(tokens, jnp.broadcast_to(jnp.arange(_T), tokens.shape), hidden_layer=-1)
        x = h.hidden_BTD.mean(axis=1)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    return _digest(emb(state, _tokens()))


def program_scann() -> str:
    from semievol_jax import rng
    from semievol_jax.retrieval.index import IndexConfig, build_index

    r = rng.numpy_rng(0, "selftest-index")
    data = r.standard_normal((4000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:200] + 0.05 * r.standard_normal((200, 64)).astype(np.float32)
    index = build_index(data, IndexConfig(backend="scann"))
    idx, score = index.search(queries, 4)
    return _digest(idx, score)


PROGRAMS: dict[str, Callable[[], str]] = {
    "llama_forward": program_forward,
    "lora_step": program_lora_step,
    "full_step": program_full_step,
    "sample": program_sample,
    "embed": program_embed,
    "scann": program_scann,
}


def run_programs(names: list[str] | None = None) -> dict[str, str]:
    """sha256 of each program's outputs, in PROGRAMS order."""
    return {name: fn() for name, fn in PROGRAMS.items() if names is None or name in names}


def load_records(folder: Path = RECORDS) -> list[dict]:
    """Every committed record (one per CPU kind and mode)."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if "selftest" in rec:
            out.append({**rec, "file": str(p)})
    return out


def compare(digests: dict[str, str], mode: str, records: list[dict]) -> tuple[bool, str]:
    """(reproduces, one-line verdict) against the committed records of `mode`."""
    same_mode = [r for r in records if r.get("mode") == mode]
    if not same_mode:
        return False, f"no committed selftest digests for mode {mode!r} to compare with"
    kinds = sorted({r.get("cpu_kind", "?") for r in same_mode})
    reference = same_mode[0]["selftest"]
    for name, digest in digests.items():
        if name in reference and reference[name] != digest:
            return False, (f"program {name!r} differs from the digests made on "
                           f"{'; '.join(kinds)} in mode {mode!r}")
    return True, (f"this machine reproduces the committed results (mode {mode!r}; "
                  f"committed on {'; '.join(kinds)})")
