"""The run config: one frozen sub-config per stage, composed into `RunConfig`.

Each stage receives only its own sub-config (hashed into its record), never the whole.
Presets are YAML files in `semievol_jax/presets/`; overrides are dotted
(`propose.n=6`), both checked against these types by `semievol_jax.config.load_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from semievol_jax.files import DIGEST_OMITS
from semievol_jax.generate.sampling import SampleConfig
from semievol_jax.model.lora import LoraConfig
from semievol_jax.pipeline.data.synth import SynthConfig
from semievol_jax.retrieval.index import IndexConfig
from semievol_jax.sharding import MeshConfig
from semievol_jax.train.config import TrainConfig
from semievol_jax.train.pretrain import PretrainConfig

ABLATIONS = ("no_iwp", "no_icp", "no_cl", "no_as")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the three splits come from, and which task they are."""

    task: str = "fpb"  # a registered task (semievol_jax.pipeline.tasks) or a user task name
    task_def: dict[str, Any] | None = None  # inline user task (kind, instruction, ...)
    labeled: str = ""  # CSV / JSONL / datasets dir / hub id of the labeled split
    unlabeled: str = ""  # the unlabeled split (its gold answers only score pseudo-labels)
    test: str = ""  # the test split
    max_rows: int = 0  # keep the first N rows of each split (0 = all): quick runs
    max_leakage: float = 0.05  # refuse when more of the test split is also labeled/unlabeled
    synth: SynthConfig | None = None  # generate the synthetic world's splits instead


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """The base model: an HF checkpoint, or a tiny Llama pretrained here."""

    model: str = ""  # HF checkpoint directory or hub id ("" when pretraining one here)
    dtype: str = "bfloat16"  # parameter dtype when loading (float32 | bfloat16)
    # The matmuls' operand dtype, summed in float32 (model/matmul.py); None: `dtype`.
    # Set, the model computes in float32 between matmuls over weights stored in `dtype`.
    # bfloat16 multiplies on a CPU's AMX tiles in the native CPU mode, and changes the
    # bits of every stage that runs the model.
    matmul_dtype: str | None = field(default=None, metadata={DIGEST_OMITS: None})
    # Attention without a KV cache (training, embeddings) and a prompt's prefill take
    # this many queries at a time over the keys up to their block's end, skipping the
    # masked future (model.set_causal_block): about half the scores of a long row, the
    # sums over fewer keys rounding in another order. 0: dense.
    causal_block: int = field(default=0, metadata={DIGEST_OMITS: 0})
    allow_pickle: bool = False  # accept pickle .bin weights (they can run code)
    pretrain: PretrainConfig | None = None  # pretrain a tiny Llama on the data's corpus


@dataclasses.dataclass(frozen=True)
class SftConfig:
    """In-weight propagation: fine-tune the base on the labeled set -> M1."""

    enabled: bool = True  # False = the "without IWP" ablation (M1 = the base)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapter shape (mode=lora)
    train: TrainConfig = field(default_factory=TrainConfig)  # official: lr 1e-4, 2 epochs


@dataclasses.dataclass(frozen=True)
class IndexStageConfig:
    """In-context propagation: embed questions with M1, k nearest labeled neighbours."""

    k: int = 1  # demonstrations per unlabeled question (0 = "without ICP"; docs/method.md)
    layer: int = -1  # hidden layer to embed with (-1 = final norm output)
    pooling: str = "mean"  # "mean" over question tokens, or "last" token
    batch_size: int = 32  # texts per embedding batch
    token_budget: int = 0  # max prompt tokens incl. demonstrations (0 = model context)
    index: IndexConfig = field(default_factory=IndexConfig)  # ScaNN / exact settings


COLLABORATOR_WEIGHTS = ("m1", "base")


@dataclasses.dataclass(frozen=True)
class ProposeConfig:
    """Collaborators: n sampled responses per unlabeled question, with token log-probs."""

    n: int = 4  # collaborators per question (1 = the "without CL" ablation)
    # Each collaborator as WEIGHTS[+icp]: WEIGHTS m1 (the SFT model) or base; +icp: the
    # index stage's prompt with its demonstrations, else the plain question. () = n x
    # "m1+icp" (the official collaborators differ only by sampling).
    collaborators: tuple[str, ...] = ()
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(
        temperature=1.0, max_new_tokens=1024, stop=()))  # official: T 1.0, 1024, no stops
    extract: str = "last"  # answer rule: last | lenient | official (Task.extract_answer)

    def specs(self) -> tuple[tuple[str, bool], ...]:
        """(weights, with demonstrations) of each collaborator, in order."""
        names = self.collaborators or ("m1+icp",) * self.n
        out = []
        for name in names:
            weights, _, extra = name.partition("+")
            if weights not in COLLABORATOR_WEIGHTS or extra not in ("", "icp"):
                raise ValueError(f"propose.collaborators: {name!r} is not WEIGHTS[+icp] with "
                                 f"WEIGHTS one of {COLLABORATOR_WEIGHTS}")
            out.append((weights, extra == "icp"))
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """Vote, self-justify disagreements, and keep low-entropy pseudo-labels."""

    theta: float = 0.3  # entropy quantile kept among reflected answers (official 30th pct.)
    rule: str = "official"  # "official": keep all consistent + reflected under θ;
    #                         "all": θ-quantile over every answer; "none": keep all (no AS)
    reflect: bool = True  # resolve disagreements by self-justification (False: majority)
    per_class: bool = False  # θ-quantile per answer class (class-balanced; docs/method.md)
    reflect_sample: SampleConfig = field(default_factory=lambda: SampleConfig(
        temperature=1.0, max_new_tokens=4096, stop=()))  # official: T 1.0, 4096, no stops
    extract: str = "last"  # answer rule of the reflections (Task.extract_answer)
    sweep_thetas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0)  # scored for the report


# "labeled" drops the pseudo-labels: the control that tells their effect from that of
# more epochs on the labeled rows.
FINAL_DATA = ("selected", "labeled+selected", "labeled")


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    """Final tuning on the selected pseudo-labels (official) or labeled + selected -> M2."""

    from_sft: bool = True  # continue from M1's weights (official) or start from the base
    data: str = "selected"  # "selected" (official) | "labeled+selected" (paper) | "labeled"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-6))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Accuracy of vanilla / SFT / SemiEvol on the test split."""

    # Greedy, where the official code samples at 0.5: a reproducible test score.
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(
        temperature=0.0, max_new_tokens=1000, stop=()))
    extract: str = "last"  # answer rule: last | lenient | official (Task.extract_answer)
    max_rows: int = 0  # evaluate the first N test rows (0 = all)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole SemiEvol run."""

    name: str = "run"  # results/<name>/ unless --run-dir is given
    seed: int = 0  # the root seed; every stage derives named keys from it
    base_seed: int = 0  # seed of the base's pretraining (shared by all run seeds)
    rounds: int = 1  # SemiEvol rounds; round r's M2 is round r+1's base
    ablation: str = ""  # "" or one of no_iwp | no_icp | no_cl | no_as
    mesh: MeshConfig = field(default_factory=MeshConfig)
    data: DataConfig = field(default_factory=DataConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    index: IndexStageConfig = field(default_factory=IndexStageConfig)
    propose: ProposeConfig = field(default_factory=ProposeConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def with_ablation(cfg: RunConfig, ablation: str) -> RunConfig:
    """The paper's "without X" rows as config changes (the one place they are defined)."""
    replace = dataclasses.replace
    if ablation == "":
        return cfg
    if ablation == "no_iwp":
        # No in-weight propagation: the collaborators are the base model, and the final
        # tuning, the only tuning left, trains a fresh adapter from the base with the SFT
        # stage's settings (the final stage's lr 1e-6 from the base would leave it the
        # vanilla model, and the row would measure nothing).
        return replace(cfg, ablation=ablation, sft=replace(cfg.sft, enabled=False),
                       final=replace(cfg.final, from_sft=False, train=cfg.sft.train))
    if ablation == "no_icp":  # no in-context propagation: no demonstrations
        return replace(cfg, ablation=ablation, index=replace(cfg.index, k=0))
    if ablation == "no_cl":  # no collaborative learning: one response, no reflection
        first = cfg.propose.collaborators[:1]
        return replace(cfg, ablation=ablation,
                       propose=replace(cfg.propose, n=1, collaborators=first),
                       select=replace(cfg.select, reflect=False))
    if ablation == "no_as":  # no adaptive selection: keep every pseudo-label
        return replace(cfg, ablation=ablation, select=replace(cfg.select, rule="none"))
    raise ValueError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
