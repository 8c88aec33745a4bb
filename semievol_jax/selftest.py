"""`semievol selftest`: small fixed programs covering what the pipeline computes, digested
and compared with the digests committed per CPU kind and CPU mode in results/repro/.

A reviewer runs it before a long rerun: if every program's sha256 equals the committed
one for this CPU mode, the machine computes what the committed results were made with;
otherwise the first program that differs is named, with the CPU kinds that made the
committed digests. In the reproducible mode (the default) the committed digests are the
same on every recorded kind, so any x86-64 machine should match; in the native mode
digests are per CPU kind and only a record of the same kind can be compared.

The programs: a Llama forward pass, a LoRA step (bf16 compute, as the real presets) and
a full fine-tuning step (f32, as the demo) with AdamW, sampling M continuations with
per-token log-probs from the KV-cached decode loop, a mean-pooled embedding, and a ScaNN
build and search. Inputs and weights are drawn from named numpy seeds (no eager JAX ops:
each would compile a program of its own); shapes are small (the whole set takes ~30 s
on 2 cores, mostly compiling) but wide enough for every vector path XLA emits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# One JSON per CPU kind this was run on (scripts/repro_record.py writes them).
RECORDS = Path(__file__).resolve().parent.parent / "results" / "repro"
# The versions the digests depend on; a record made with others is compared all the same,
# with a note.
KEY_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scann")

_SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_layers=2,
              num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10000.0,
              max_position_embeddings=256, eos_token_id=(1,))
_B, _T = 4, 48


def _version(name: str) -> str:
    """An installed distribution's version ("?" when absent): jaxlib is no declared
    dependency (jax pulls it), so `pinned_versions` does not list it."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _model(lora: bool):
    """The selftest Llama, weights from a named numpy stream (norm scales near 1, the
    rest normal; LoRA B non-zero, so the adapters change the forward pass)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from semievol_jax import rng
    from semievol_jax.model import Llama, LlamaConfig, LoraConfig

    cfg = LlamaConfig(**_SHAPE)
    lora_cfg = LoraConfig(rank=8, alpha=16.0, dropout=0.0) if lora else None
    abstract = nnx.eval_shape(lambda: Llama(cfg, lora=lora_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    r = rng.numpy_rng(0, "selftest-weights")

    def fill(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # LoRA dropout streams
            return jax.random.wrap_key_data(np.zeros((*leaf.shape, 2), np.uint32))
        if not jnp.issubdtype(leaf.dtype, jnp.floating):  # their counters
            return jnp.zeros(leaf.shape, leaf.dtype)
        x = r.standard_normal(leaf.shape).astype(leaf.dtype)
        if "scale" in str(path[-1]):
            return jnp.asarray(1.0 + 0.1 * x)
        return jnp.asarray(x / np.sqrt(leaf.shape[-1]))

    return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


def _tokens() -> np.ndarray:
    from semievol_jax import rng

    return rng.numpy_rng(0, "selftest").integers(2, _SHAPE["vocab_size"], (_B, _T)).astype(
        np.int32)


def _jitted(lora: bool, body) -> str:
    """Digest of `body(model, tokens, positions)` jitted over the small model's state."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(_model(lora=lora))

    @jax.jit
    def run(state, tokens):
        positions = jnp.broadcast_to(jnp.arange(_T), tokens.shape)
        return body(nnx.merge(graphdef, state), tokens, positions)

    return _digest(run(state, _tokens()))


def program_forward() -> str:
    return _jitted(True, lambda m, tokens, positions: m(tokens, positions).logits_BTV)


def _train_step(mode: str, compute_dtype: str | None) -> str:
    from semievol_jax import rng, sharding
    from semievol_jax.train import step as step_lib
    from semievol_jax.train.config import TrainConfig
    from semievol_jax.train.data import Batch, score_positions
    from semievol_jax.train.optim import make_optimizer

    model = _model(lora=mode == "lora")
    tc = TrainConfig(mode=mode, batch_size=_B, learning_rate=1e-3,
                     compute_dtype=compute_dtype, warmup_ratio=0.0)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    step_lib.set_compute_dtype(model, compute_dtype)
    split = step_lib.split_model(model, mode)
    tx = make_optimizer(tc, 10)
    state_sh = step_lib.state_shardings(split, tx, mesh)
    rest = step_lib.cast_rest(split.rest, compute_dtype)
    rest_sh = sharding.state_shardings(rest, mesh)
    rest = sharding.put(rest, rest_sh)
    fn = step_lib.make_train_step(split, tx, tc, mesh, state_sh, rest_sh)
    tokens = _tokens()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    loss_mask = np.zeros_like(inputs, bool)
    loss_mask[:, _T // 2:] = True
    at, mask = score_positions(loss_mask)
    ones = np.ones_like(inputs, bool)
    pos = np.broadcast_to(np.arange(_T - 1, dtype=np.int32), inputs.shape).copy()
    batch = Batch(inputs[None], targets[None], loss_mask[None], ones[None], pos[None],
                  at[None], mask[None], ones[None].astype(np.int32))
    batch = sharding.put(batch, step_lib.batch_shardings(mesh))
    state = step_lib.init_train_state(split, tx, state_sh)
    key = rng.key_for(0, "selftest")
    for _ in range(2):
        state, metrics = fn(state, rest, batch, key)
    leaves = [state["params"][k] for k in sorted(state["params"])]
    return _digest(metrics["loss"], metrics["grad_norm"], *leaves)


def program_lora_step() -> str:
    return _train_step("lora", "bfloat16")


def program_full_step() -> str:
    return _train_step("full", None)


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
    import jax.numpy as jnp

    def body(m, tokens, positions):
        x = m(tokens, positions, hidden_layer=-1).hidden_BTD.mean(axis=1)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    return _jitted(False, body)


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


@dataclasses.dataclass(frozen=True)
class Run:
    """One selftest run on this machine."""

    mode: str  # the CPU mode in effect (environment.cpu_mode_in_effect)
    xla_flags: str  # XLA_FLAGS it ran with
    cpu: dict[str, Any]  # environment.cpu_info()
    cpu_kind: str  # environment.cpu_kind(cpu)
    packages: dict[str, str]  # versions of KEY_PACKAGES
    digests: dict[str, str]  # program -> sha256
    seconds: dict[str, float]  # program -> wall seconds (compiling included)
    wall_s: float  # the whole run, imports included


def run(names: list[str] | None = None) -> Run:
    """Run the programs (all, or `names`) in this process's CPU mode."""
    import os

    from semievol_jax import environment

    start = time.perf_counter()
    digests, seconds = {}, {}
    for name, fn in PROGRAMS.items():
        if names is None or name in names:
            t = time.perf_counter()
            digests[name] = fn()
            seconds[name] = round(time.perf_counter() - t, 2)
    cpu = environment.cpu_info()
    versions = environment.pinned_versions()
    return Run(environment.cpu_mode_in_effect(), os.environ.get("XLA_FLAGS", ""), cpu,
               environment.cpu_kind(cpu), {k: versions.get(k) or _version(k) for k in KEY_PACKAGES},
               digests, seconds, round(time.perf_counter() - start, 1))


def load_records(folder: Path = RECORDS) -> list[dict[str, Any]]:
    """Every committed record (one per CPU kind), each with the file it came from."""
    if not Path(folder).is_dir():
        return []
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("selftest"), dict):
            out.append({**rec, "file": str(p)})
    return out


def _kind(rec: dict[str, Any]) -> str:
    kind = rec.get("cpu_kind", "?")
    return f"{kind}, emulated" if rec.get("emulated") else kind


@dataclasses.dataclass(frozen=True)
class Verdict:
    reproduces: bool
    message: str  # one line: what a reviewer reads
    notes: tuple[str, ...] = ()  # what else may explain a difference


def compare(digests: dict[str, str], mode: str, records: list[dict[str, Any]], *,
            cpu_kind: str, packages: dict[str, str] | None = None) -> Verdict:
    """This machine's `digests` (made in `mode` on `cpu_kind`) against the committed
    records of that mode: in the reproducible mode every record counts (its digests
    should be the same on every kind); in the native mode only records of `cpu_kind`.
    The first program, in PROGRAMS order, that differs from any record is named with
    the kinds it differs from."""
    refs = [r for r in records if mode in r["selftest"]]
    if mode != "reproducible":
        refs = [r for r in refs if r.get("cpu_kind") == cpu_kind]
    if not refs:
        where = " for this CPU kind" if mode != "reproducible" else ""
        others = "; ".join(sorted({_kind(r) for r in records})) or "none"
        return Verdict(False, f"no committed digests of CPU mode {mode!r}{where} "
                              f"({cpu_kind}) to compare with; committed kinds: {others}")
    notes = []
    for r in refs:
        theirs = r.get("packages", {})
        if packages and (diff := [f"{k} {theirs[k]} there, {packages[k]} here"
                                  for k in KEY_PACKAGES
                                  if k in theirs and theirs[k] != packages.get(k)]):
            notes.append(f"{Path(r['file']).name} was made with other versions: "
                         + ", ".join(diff))
    order = [n for n in PROGRAMS if n in digests] + [n for n in digests if n not in PROGRAMS]
    for name in order:
        differ = [r for r in refs
                  if name in r["selftest"][mode]["digests"]
                  and r["selftest"][mode]["digests"][name] != digests[name]]
        if differ:
            same = [r for r in refs if r not in differ]
            tail = f"; it equals those of {'; '.join(map(_kind, same))}" if same else ""
            return Verdict(False, f"program {name!r} differs from the digests committed "
                                  f"in CPU mode {mode!r} on {'; '.join(map(_kind, differ))} "
                                  f"(this machine: {cpu_kind}){tail}", tuple(notes))
    return Verdict(True, f"this machine reproduces the committed results (CPU mode "
                         f"{mode!r}; the digests committed on "
                         f"{'; '.join(map(_kind, refs))})", tuple(notes))


def format_run(run_: Run, records: list[dict[str, Any]]) -> list[str]:
    """The per-program lines: digest, how it compares with the records of its mode."""
    refs = [r["selftest"][run_.mode]["digests"] for r in records
            if run_.mode in r["selftest"]
            and (run_.mode == "reproducible" or r.get("cpu_kind") == run_.cpu_kind)]
    lines = []
    for name, digest in run_.digests.items():
        known = [ref[name] for ref in refs if name in ref]
        state = ("-" if not known else "same" if all(k == digest for k in known)
                 else "DIFFERS")
        lines.append(f"  {name:<14} {digest[:16]}  {state:<8} {run_.seconds[name]:6.1f}s")
    return lines


def main(as_json: bool = False, records_dir: Path = RECORDS) -> int:
    """`semievol selftest`: run, compare, print; 0 when this machine reproduces."""
    from semievol_jax import environment

    run_ = run()
    records = load_records(records_dir)
    verdict = compare(run_.digests, run_.mode, records, cpu_kind=run_.cpu_kind,
                      packages=run_.packages)
    if as_json:
        print(json.dumps({**dataclasses.asdict(run_), "reproduces": verdict.reproduces,
                          "verdict": verdict.message, "notes": list(verdict.notes)},
                         indent=1))
    else:
        other = "native" if run_.mode == "reproducible" else "reproducible"
        print(f"selftest in CPU mode {run_.mode!r} ({environment.CPU_MODE_ENV}={other} for "
              f"the other) on {run_.cpu_kind}, {run_.cpu['cores']} cores")
        print("\n".join(format_run(run_, records)))
        print(f"{run_.wall_s:.0f}s in all")
        print("\n".join([verdict.message, *[f"note: {n}" for n in verdict.notes]]))
    return 0 if verdict.reproduces else 1
