"""Everything a run can be refused for, found before any stage runs.

One pass in the first seconds: the settings (checks.py), the task, the split sources
(set, present, of a known format), the base checkpoint (checkpoint_look.py), and the run
directory (a directory, or creatable, and writable). `semievol validate` adds the splits
themselves, loaded as the data stage loads them. Nothing is written.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from semievol_jax.errors import DataError, UserError
from semievol_jax.pipeline import checks
from semievol_jax.pipeline.checkpoint_look import look_at_checkpoint
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.pipeline.data.readers import DELIMITERS, JSON_SUFFIXES
from semievol_jax.pipeline.data.splits import (
    SPLITS,
    Splits,
    SplitsError,
    load_splits,
    missing_sources,
)
from semievol_jax.pipeline.data.synth import write_world
from semievol_jax.pipeline.sources import HUB_PREFIX
from semievol_jax.pipeline.stages import task_of
from semievol_jax.pipeline.tasks import TaskError


class PreflightError(UserError):
    """A run that would fail: every problem found before it started, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        head = "" if len(problems) == 1 else f"{len(problems)} problems, found before any " \
                                              "stage ran:\n"
        super().__init__(head + "\n".join(problems))


@dataclasses.dataclass
class Preflight:
    """What preflight found: problems (the run would fail) and notes."""

    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def raise_problems(self) -> None:
        if self.problems:
            raise PreflightError(self.problems)


def check_run(cfg: RunConfig, run_dir: Path | None = None) -> Preflight:
    """Settings, task, sources, checkpoint and (given) the run directory of `cfg`."""
    found = Preflight(problems=checks.check_settings(cfg))
    found.problems += _task_problems(cfg)
    if cfg.data.synth is None:
        found.problems += split_source_problems(
            {k: getattr(cfg.data, k) for k in SPLITS})
    if cfg.base.pretrain is None:
        look = look_at_checkpoint(cfg.base.model, allow_pickle=cfg.base.allow_pickle) \
            if cfg.base.model else None
        if look is None:
            found.problems.append("base.model: not set: give an HF checkpoint directory, a "
                                  ".gguf file, a fetchable model or a hub id (or set "
                                  "base.pretrain)")
        else:
            found.problems += look.problems
            found.notes += look.notes
            if look.cfg is not None and cfg.index.k > 0 and \
                    not -1 <= cfg.index.layer < look.cfg.num_layers:
                found.problems.append(f"index.layer={cfg.index.layer}: must be in [-1, "
                                      f"{look.cfg.num_layers}) for this {look.cfg.num_layers}"
                                      "-layer base")
    if run_dir is not None:
        found.problems += run_dir_problems(Path(run_dir))
    return found


def _task_problems(cfg: RunConfig) -> list[str]:
    try:
        task_of(cfg.data)
    except TaskError as e:
        return [f"data.task={cfg.data.task}: {e}"]
    return []


def split_source_problems(sources: dict[str, str]) -> list[str]:
    """A split not set, not there, or of a format no reader takes."""
    out = missing_sources(sources)
    for split in SPLITS:
        value = sources.get(split)
        if not value or value.startswith(HUB_PREFIX):
            continue
        path = Path(value).expanduser()
        if not path.exists():
            out.append(f"data.{split}={value}: no such file or directory (a Hugging Face "
                       "hub dataset is written hf:owner/name)")
        elif path.is_file() and path.suffix.lower() not in (*DELIMITERS, *JSON_SUFFIXES):
            out.append(f"data.{split}={value}: unknown format {path.suffix!r}; use .csv, "
                       ".tsv, .jsonl or a datasets directory")
        elif path.is_file() and not os.access(path, os.R_OK):
            out.append(f"data.{split}={value}: not readable")
    return out


def run_dir_problems(run_dir: Path) -> list[str]:
    """Why the run directory cannot be written (it is a file, under a file, read-only)."""
    if run_dir.exists() and not run_dir.is_dir():
        return [f"run directory {run_dir}: exists and is not a directory"]
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return [f"run directory {run_dir}: {probe} is a file, not a directory"]
    try:  # os.access says yes to root on a read-only mount: try it
        fd, name = tempfile.mkstemp(dir=probe, prefix=".semievol-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return [f"run directory {run_dir}: cannot write in {probe} ({e.strerror or e})"]
    return []


def check_splits(cfg: RunConfig, *, strict: bool = False
                 ) -> tuple[Splits | None, dict[str, int], list[str]]:
    """The splits of `cfg` loaded as the data stage loads them (a generated source into a
    temporary directory): (splits or None, rows of each split that loaded, problems)."""
    try:
        with tempfile.TemporaryDirectory(prefix="semievol-validate-") as tmp:
            sources = {k: getattr(cfg.data, k) for k in SPLITS}
            if cfg.data.synth is not None:
                paths = write_world(Path(tmp), cfg.data.synth)
                sources = {k: str(paths[k]) for k in SPLITS}
            splits = load_splits(sources, task_of(cfg.data), max_rows=cfg.data.max_rows,
                                 strict=strict, max_leakage=checks.max_leakage(cfg.data))
            return splits, splits.counts(), []
    except SplitsError as e:
        return None, e.rows, list(e.problems)
    except DataError as e:
        return None, {}, list(e.problems)
    except UserError as e:
        return None, {}, str(e).splitlines()
