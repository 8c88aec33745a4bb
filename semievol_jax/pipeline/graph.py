"""The stage graph of one run and its rounds: which stages, reading what, in which order.

Round 1 is data -> base -> sft -> index -> propose -> select -> final -> eval in the run
directory itself. Round r > 1 lives in `run_dir/round<r>/`: its base is the previous
round's M2, and it adopts round 1's data (and round 1's base as `vanilla`, which eval
reports), so a one-round run and round 1 of a longer run are the same directories.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from semievol_jax import rng, sharding
from semievol_jax.config import to_yaml
from semievol_jax.errors import UserError
from semievol_jax.files import write_text_atomic
from semievol_jax.pipeline import checks
from semievol_jax.pipeline import stages as st
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.pipeline.preflight import PreflightError
from semievol_jax.pipeline.runner import ROUND_PREFIX, Runner, Stage

ORDER = {name: i for i, name in enumerate(
    ("data", "base", "sft", "index", "propose", "select", "final", "eval"))}
# What a later round's base stage reads: the previous round's stages it rebuilds M2 from,
# adopted under these names (their output digests chain the rounds' records).
PREVIOUS = {"prev_base": "base", "prev_sft": "sft", "prev_final": "final"}


def stage_dir(run_dir: Path, name: str) -> Path:
    """Where stage `name` of round 1 lies in `run_dir` (`NN_name`)."""
    return Path(run_dir) / f"{ORDER[name]:02d}_{name}"


def _stage(name: str, fn, config, reads: tuple[str, ...] = (), *,
           sources: dict[str, str] | None = None, **kw: Any) -> Stage:
    """A stage whose extra arguments (all but the mesh) are hashed with its config, and
    whose `sources` (files read from outside the run) are keyed by content."""
    salt = {k: v for k, v in kw.items() if k != "mesh"} or None
    return Stage(name, functools.partial(fn, **kw) if kw else fn, config, reads=reads,
                 order=ORDER[name], salt=salt, sources=sources or None)


def round_dir(run_dir: Path, round_index: int) -> Path:
    """Where round `round_index` (1-based) writes its stages."""
    return Path(run_dir) if round_index == 1 else Path(run_dir) / f"{ROUND_PREFIX}{round_index}"


def round_seed(seed: int, round_index: int) -> int:
    """The root seed of one round: `seed` itself in round 1 (so a one-round run is
    unchanged), a named derivation after it, so rounds sample different continuations."""
    if round_index == 1:
        return seed
    return int(rng.numpy_rng(seed, ROUND_PREFIX, round_index).integers(2**31 - 1))


def build_stages(cfg: RunConfig, mesh, round_index: int = 1) -> list[Stage]:
    """One round of the pipeline as Stage objects (see stages.py for what each writes).

    Round 1 is data -> base -> ... -> eval. A later round has no data stage and its base
    is the previous round's M2: its runner must first adopt round 1's `data` and `base`
    (as `vanilla`, which eval reports) and the previous round's stages named in PREVIOUS.
    """
    if cfg.rounds < 1:
        raise UserError(f"rounds must be at least 1, got {cfg.rounds}")
    if not 1 <= round_index <= cfg.rounds:
        raise ValueError(f"round {round_index} is outside 1..{cfg.rounds}")
    common = {"base_cfg": cfg.base, "task": st.task_of(cfg.data), "mesh": mesh}
    seeded = {**common, "seed": round_seed(cfg.seed, round_index)}
    if round_index == 1:
        head = [_stage("data", st.run_data, cfg.data, sources=st.data_sources(cfg.data)),
                _stage("base", st.run_base, cfg.base, ("data",), seed=cfg.base_seed,
                       task=common["task"], sources=st.base_sources(cfg.base))]
    else:
        head = [_stage("base", st.run_round_base, cfg.base, tuple(PREVIOUS), mesh=mesh)]
    vanilla = ("vanilla",) if round_index > 1 else ()
    return head + [
        _stage("sft", st.run_sft, cfg.sft, ("data", "base"), **seeded),
        _stage("index", st.run_index, cfg.index, ("data", "base", "sft"), **common),
        _stage("propose", st.run_propose, cfg.propose, ("data", "base", "sft", "index"),
               **seeded),
        _stage("select", st.run_select, cfg.select, ("data", "base", "sft", "propose"),
               **seeded),
        _stage("final", st.run_final, cfg.final, ("data", "base", "sft", "select"),
               sft_cfg=cfg.sft, **seeded),
        _stage("eval", st.run_eval, cfg.eval,
               ("data", "base", "sft", "index", "propose", "select", "final", *vanilla),
               thetas=tuple(cfg.select.sweep_thetas), select_cfg=cfg.select, **seeded),
    ]


def make_mesh(cfg: RunConfig):
    """The run's device mesh, after the XLA flags and (if asked) the multi-host join
    that must come before any JAX backend starts."""
    sharding.initialize_runtime(cfg.mesh)
    return sharding.make_mesh(cfg.mesh)


def run_pipeline(cfg: RunConfig, run_dir: Path, *, mesh=None,
                 shared: dict[str, Path] | None = None,
                 stop_after: str | None = None) -> dict[str, dict[str, Any]]:
    """Run (or resume) every round of one pipeline into `run_dir`.

    `shared` stages are adopted into round 1, not rerun. `stop_after` runs round 1 only
    up to that stage (a prefix that other runs adopt). Returns stage name -> record for
    round 1 (as for a one-round run) and `round<r>/<stage>` -> record for each later
    round's own stages.
    """
    if problems := checks.check_settings(cfg):  # library callers too, in milliseconds
        raise PreflightError(problems)
    mesh = mesh if mesh is not None else make_mesh(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if sharding.is_main_process():  # one writer, as for the stages' records
        write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    first = Runner(run_dir, is_writer=sharding.is_main_process())
    stages = build_stages(cfg, mesh)
    for name, d in (shared or {}).items():
        first.adopt(name, d)
    if stop_after is not None:
        stages = stages[:[s.name for s in stages].index(stop_after) + 1]
    records = first.run([s for s in stages if s.name not in (shared or {})])
    if stop_after is not None:
        return records
    prev = first
    for r in range(2, cfg.rounds + 1):
        runner = Runner(round_dir(run_dir, r), is_writer=sharding.is_main_process())
        runner.adopt("data", first.dirs["data"])
        runner.adopt("vanilla", first.dirs["base"])
        for name, stage in PREVIOUS.items():
            runner.adopt(name, prev.dirs[stage])
        own = build_stages(cfg, mesh, r)
        done = runner.run(own)
        records |= {f"{ROUND_PREFIX}{r}/{s.name}": done[s.name] for s in own}
        prev = runner
    return records


def records_by_round(records: dict[str, dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """{round: {stage: record}} from what run_pipeline returned (round 1 first)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for key, rec in records.items():
        prefix, _, name = key.rpartition("/")
        r = int(prefix.removeprefix(ROUND_PREFIX)) if prefix else 1
        out.setdefault(r, {})[name] = rec
    return dict(sorted(out.items()))


def headline_metrics(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Eval metrics of a run: vanilla and SFT from round 1 (the baselines), SemiEvol
    after the last round (== round 1's eval metrics for a one-round run)."""
    rounds = records_by_round(records)
    first, last = rounds[min(rounds)]["eval"], rounds[max(rounds)]["eval"]
    return {**first["metrics"], "acc_semievol": last["metrics"]["acc_semievol"]}
