"""Settings checked before any stage runs: one table of rules keyed by dotted name.

Every field of the resolved `RunConfig` is visited once. A rule's patterns are dotted
names (`select.theta`) or globs over names (`*.learning_rate` covers `sft.train.` and
`final.train.`); every rule with a pattern matching a field is applied to its value. Two
generic rules need no entry: a float must be finite, and a sub-config with a
`validate()` method (TrainConfig) must pass it. A new setting is one more pattern in a
row of `RULES` (`tests/test_checks.py` lists the numeric and text fields none covers).

A problem is one line naming the setting: `select.theta=2.0: must be in [0, 1]`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import typing
from collections.abc import Callable, Iterator
from typing import Any

from semievol_jax.generate.embed import POOLINGS
from semievol_jax.model.kv_cache import KEY_LAYOUTS
from semievol_jax.pipeline.config import ABLATIONS, COLLABORATOR_WEIGHTS, FINAL_DATA, RunConfig
from semievol_jax.pipeline.selection import RULES as SELECTION_RULES
from semievol_jax.pipeline.tasks import EXTRACTION_RULES
from semievol_jax.train.config import LORA_GRAD_NAMES, REMAT_NAMES

Rule = Callable[[Any], "str | None"]  # what is wrong with a value, or None

PARAM_DTYPES = ("float32", "bfloat16", "float16")  # what the model loads weights as
SCHEDULES = ("cosine", "linear", "constant")
TRAIN_MODES = ("lora", "full")
TRUNCATE_MODES = ("error", "left")
COLLABORATORS = tuple(w + x for w in COLLABORATOR_WEIGHTS for x in ("", "+icp"))
DEFAULT_MAX_LEAKAGE = 0.05  # share of the test split also in labeled/unlabeled, refused above


def at_least(lo: float) -> Rule:
    return lambda v: None if v >= lo else f"must be at least {lo}"


def above(lo: float) -> Rule:
    return lambda v: None if v > lo else f"must be greater than {lo}"


def in_range(lo: float, hi: float, *, low_open: bool = False, high_open: bool = False
             ) -> Rule:
    text = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"

    def rule(v):
        ok_lo = v > lo if low_open else v >= lo
        ok_hi = v < hi if high_open else v <= hi
        return None if ok_lo and ok_hi else f"must be in {text}"
    return rule


def one_of(*choices: Any) -> Rule:
    shown = " | ".join("''" if c == "" else "null" if c is None else str(c) for c in choices)
    return lambda v: None if v in choices else f"must be one of {shown}"


def optional(rule: Rule) -> Rule:
    """`rule`, or None (unset) is fine."""
    return lambda v: None if v is None else rule(v)


def each(rule: Rule) -> Rule:
    """`rule` for every element of a list setting."""
    def check(values):
        for i, v in enumerate(values):
            if (why := rule(v)) is not None:
                return f"element {i} ({v!r}) {why}"
        return None
    return check


def run_name(v: str) -> str | None:
    """`results/<name>/` must be a folder of its own, not `results/` or a path."""
    ok = v not in ("", ".", "..") and "/" not in v and "\\" not in v
    return None if ok else "must be a non-empty folder name (no '/'; use --run-dir for a path)"


def mesh_ways(v: int) -> str | None:
    return None if v == -1 or v >= 1 else "must be -1 (all devices left) or at least 1"


# (patterns, rule): a pattern is a dotted name or a glob; several, space-separated, share
# the rule. Grouped by what they ask: counts, positive sizes, shares, choices.
RULES: tuple[tuple[str, Rule], ...] = (
    ("name", run_name),
    ("mesh.data", mesh_ways),
    ("*seed data.max_rows eval.max_rows index.k index.token_budget index.index.* "
     "data.synth.num_* data.synth.icl_* data.synth.bios_per_person data.synth.labeled_people "
     "data.synth.quizzes_per_practice_person base.pretrain.warmup_steps "
     "base.pretrain.grad_clip *.weight_decay *.train.max_grad_norm *.temperature *.top_k "
     "*.cache_tokens",
     at_least(0)),
    ("rounds propose.n mesh.fsdp mesh.tensor *.epochs *.batch_size *.max_new_tokens "
     "base.pretrain.*_size base.pretrain.num_* base.pretrain.steps sft.lora.rank "
     "*.train.checkpoint_every *.train.keep_checkpoints *.train.log_every", at_least(1)),
    ("data.synth.num_options data.synth.num_values base.pretrain.seq_len "
     "*.train.cutoff_len *.train.pack_length", at_least(2)),
    ("index.layer", at_least(-1)),
    ("*.learning_rate *.train.adam_eps sft.lora.alpha base.pretrain.rope_theta", above(0)),
    ("mesh.num_processes *.micro_batch_size *.train.max_steps", optional(at_least(1))),
    ("mesh.process_id", optional(at_least(0))),
    ("base.causal_block *.train.program_cost", at_least(0)),
    ("*.train.length_buckets", each(at_least(1))),
    ("select.theta data.max_leakage data.synth.icl_match", in_range(0, 1)),
    ("select.sweep_thetas", each(in_range(0, 1))),
    ("*.train.warmup_ratio *.train.adam_b1 *.train.adam_b2 sft.lora.dropout",
     in_range(0, 1, high_open=True)),
    ("*.top_p", in_range(0, 1, low_open=True)),
    ("ablation", one_of("", *ABLATIONS)),
    ("base.dtype", one_of(*PARAM_DTYPES)),
    ("base.matmul_dtype", one_of(None, *PARAM_DTYPES)),
    ("*.train.compute_dtype", one_of(None, *PARAM_DTYPES)),
    ("*.train.mode", one_of(*TRAIN_MODES)),
    ("*.train.schedule", one_of(*SCHEDULES)),
    ("*.truncate", one_of(*TRUNCATE_MODES)),
    ("*.key_layout", one_of(*KEY_LAYOUTS)),
    ("index.pooling", one_of(*POOLINGS)),
    ("select.rule", one_of(*SELECTION_RULES)),
    ("*.train.remat", lambda v: None if isinstance(v, bool)  # older configs: none/dots
     else one_of(*REMAT_NAMES)(v)),
    ("*.train.lora_grad", one_of(*LORA_GRAD_NAMES)),
    ("propose.collaborators", each(one_of(*COLLABORATORS))),
    ("propose.extract select.extract eval.extract", one_of(*EXTRACTION_RULES)),
    ("final.data", one_of(*FINAL_DATA)),
)
# Settings no range or choice applies to: free text, names, paths (checked by
# preflight), switches; listed so that a new setting without a rule is noticed.
FREE = ("mesh.coordinator", "data.task", "data.task_def", "data.labeled", "data.unlabeled",
        "data.test", "data.synth.relations", "data.synth.labeled_relations", "base.model",
        "*.stop", "index.index.backend", "index.index.anisotropic_threshold",
        "index.index.soar_lambda", "sft.lora.targets")


def fields(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """(dotted name, value, field) of every leaf setting under a config dataclass; a
    sub-config set to None (`data.synth`) has no leaves."""
    for f in dataclasses.fields(node):
        name = f"{prefix}{f.name}"
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from fields(value, name + ".")
        else:
            yield name, value, f


def _sub_configs(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield prefix + f.name, value
            yield from _sub_configs(value, prefix + f.name + ".")


def rules_for(name: str) -> list[Rule]:
    """The rules of `RULES` one of whose patterns matches the dotted `name`."""
    return [rule for patterns, rule in RULES
            if any(fnmatch.fnmatchcase(name, p) for p in patterns.split())]


def _shown(v: Any) -> str:
    return "''" if v == "" else "null" if v is None else str(list(v) if isinstance(v, tuple)
                                                            else v)


def check_settings(cfg: RunConfig) -> list[str]:
    """Every problem with the settings of `cfg`, one line each naming the setting."""
    problems = []
    for name, value, _ in fields(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}={value}: must be a finite number")
            continue
        for rule in rules_for(name):
            try:
                why = rule(value)
            except TypeError:  # a glob's numeric rule met a text setting: not its kind
                why = None
            if why is not None:
                problems.append(f"{name}={_shown(value)}: {why}")
                break
    if not problems:
        problems += _validated_sub_configs(cfg)
    if cfg.base.pretrain is not None:
        problems += _pretrain_shape(cfg)
    return problems


def _validated_sub_configs(cfg: RunConfig) -> list[str]:
    """Sub-configs that check their own fields together (TrainConfig.validate): their
    messages name the field as `train.x`, re-rooted at the sub-config's dotted name."""
    out = []
    for name, node in _sub_configs(cfg):
        check = getattr(node, "validate", None)
        if not callable(check):
            continue
        if name == "final.train":  # the final stage trains in the SFT stage's mode
            node = dataclasses.replace(node, mode=cfg.sft.train.mode)
            check = node.validate
        try:
            check()
        except ValueError as e:
            leaf = name.rsplit(".", 1)[-1]
            out.append(str(e).replace(f"{leaf}.", f"{name}.", 2) if leaf in str(e)
                       else f"{name}: {e}")
    return out


def _pretrain_shape(cfg: RunConfig) -> list[str]:
    p = cfg.base.pretrain
    out = []
    if p.hidden_size % p.num_heads:
        out.append(f"base.pretrain.hidden_size={p.hidden_size}: must be a multiple of "
                   f"base.pretrain.num_heads={p.num_heads}")
    elif (p.hidden_size // p.num_heads) % 2:
        out.append(f"base.pretrain.hidden_size={p.hidden_size}: hidden_size / num_heads "
                   "must be even (RoPE rotates pairs)")
    if p.num_heads % p.num_kv_heads:
        out.append(f"base.pretrain.num_heads={p.num_heads}: must be a multiple of "
                   f"base.pretrain.num_kv_heads={p.num_kv_heads}")
    return out


def max_leakage(data_cfg: Any) -> float:
    """The share of the test split that may also be in labeled / unlabeled
    (`data.max_leakage` once the config has it)."""
    return float(getattr(data_cfg, "max_leakage", DEFAULT_MAX_LEAKAGE))


def uncovered_settings() -> list[str]:
    """Numeric and text settings that no rule and no `FREE` entry covers (optional
    sub-configs such as `data.synth` included, as if set)."""
    out = []
    for name, value, _ in fields(_filled(RunConfig())):
        if isinstance(value, bool):
            continue
        if rules_for(name) or any(fnmatch.fnmatchcase(name, p) for p in FREE):
            continue
        out.append(name)
    return out


def _filled(node: Any) -> Any:
    """`node` with every optional sub-config that is None set to its defaults."""
    hints = typing.get_type_hints(type(node))
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if value is None:
            kinds = [t for t in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(t)]
            value = kinds[0]() if kinds else None
        if dataclasses.is_dataclass(value):
            changes[f.name] = _filled(value)
    return dataclasses.replace(node, **changes)
