"""Stage runner: atomic stage directories, digest records, skip / resume.

A run directory holds one sub-directory per stage, `NN_name/`, each written atomically
(a temporary sibling renamed into place) with a `record.json` that names the stage's
config digest, the output digests of the stages it reads, and the digest of every file
it wrote. A stage whose record matches the current config and inputs is skipped; any
mismatch reruns it and, through the changed output digest, everything downstream.
A stage's `sources` (files it reads from outside the run: a split's CSV, a checkpoint)
are digested by content into its key and its record (sources.py), so an edited input
reruns it too. Long stages keep resumable state (training checkpoints) in `.work/`,
keyed by the stage's input key, so a killed run resumes where it stopped and a changed
config never resumes stale state; the temporary folders a killed run left are removed
when the next run starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from semievol_jax.environment import drop_programs_between_stages, release_free_memory
from semievol_jax.errors import UserError
from semievol_jax.files import file_digest, to_jsonable, write_json_atomic
from semievol_jax.pipeline.sources import digest_sources, sources_key

RECORD = "record.json"
MANIFEST = "manifest.json"
DIGESTS = "digests.json"  # {sub-run: {stage: output digest}}: a tree of runs summarised
# Files under these sub-directories of a stage are logs (timestamps, TensorBoard
# events): kept, but not part of the stage's digest.
UNDIGESTED_DIRS = ("logs",)
# A run's later rounds are sub-runs in `round<r>/` beside its config.yaml (graph.py).
ROUND_PREFIX = "round"


@dataclasses.dataclass
class StageContext:
    """What a stage function gets: where to write, where to keep state, what it reads."""

    out: Path  # the (temporary) output directory; renamed into place on success
    work: Path  # persistent scratch for resumable state (checkpoints); survives kills
    inputs: dict[str, Path]  # upstream stage name -> its finished directory
    config: Any  # the stage's own sub-config
    # name -> digested source (sources.py) of the files the stage reads from outside
    sources: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage: a function of its config and upstream outputs."""

    name: str  # short noun, e.g. "sft"
    fn: Callable[[StageContext], Mapping[str, Any] | None]  # writes ctx.out, returns metrics
    config: Any  # hashed into the record: a change reruns this stage
    reads: tuple[str, ...] = ()  # upstream stages whose outputs this stage reads
    order: int | None = None  # the NN of its directory; None = position in the run
    salt: Any = None  # anything else the result depends on (seed, task): hashed with config
    # name -> path or id of what it reads from outside the run dir: keyed by content
    sources: Mapping[str, str] | None = None


def digest_json(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def digest_dir(root: Path) -> dict[str, str]:
    """Relative path -> sha256 for every digested file under `root` (sorted)."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == RECORD or rel.split("/")[0] in UNDIGESTED_DIRS:
            continue
        files[rel] = file_digest(p)
    return files


def read_record(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's record; None when it is missing or unreadable (the stage reruns)."""
    try:
        rec = json.loads((stage_dir / RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file the user may have damaged, or one UserError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable {what} ({e})") from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Removes the `.NN_stage.tmp-PID` / `.old-PID` folders of processes that are gone
    (a killed run's half-written stages); returns what was removed."""
    removed = []
    for p in Path(run_dir).glob(".[0-9][0-9]_*.*-*"):
        kind, _, pid = p.name.rpartition(".")[2].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and p.is_dir() and (
                int(pid) == os.getpid() or not _pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


class Runner:
    """Runs stages in order inside one run directory; skips what is already done."""

    def __init__(self, run_dir: Path, *, is_writer: bool = True, log=print,
                 sync: Callable[[str], None] | None = None):
        self.run_dir = Path(run_dir)
        self.is_writer = is_writer  # only process 0 writes shared files
        self.log = log
        # Barrier across the processes of a multi-host job (see run_stage).
        self.sync = sync or process_barrier
        self.records: dict[str, dict[str, Any]] = {}
        self.dirs: dict[str, Path] = {}

    def adopt(self, name: str, stage_dir: Path) -> None:
        """Use a finished stage of another run (e.g. a shared base) as this run's `name`.

        Its record's output digest feeds this run's downstream keys, so the variants
        that share a stage stay as reproducible as the run that made it.
        """
        rec = read_record(stage_dir)
        if rec is None or not self._outputs_intact(stage_dir, rec):
            raise RuntimeError(f"cannot adopt {stage_dir}: no intact record")
        self.records[name], self.dirs[name] = rec, Path(stage_dir)

    def stage_dir(self, index: int, name: str) -> Path:
        return self.run_dir / f"{index:02d}_{name}"

    def run(self, stages: Sequence[Stage]) -> dict[str, dict[str, Any]]:
        """Run `stages` in order; returns name -> record."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_writer:
            for p in remove_stale_temporaries(self.run_dir):
                self.log(f"removed {p.name}, left by a killed run")
        for i, stage in enumerate(stages):
            self.run_stage(i if stage.order is None else stage.order, stage)
        if self.is_writer:
            write_json_atomic(self.run_dir / MANIFEST, self.manifest())
        return self.records

    def manifest(self) -> dict[str, Any]:
        return {
            name: {"dir": os.path.relpath(self.dirs[name], self.run_dir),
                   "output_digest": rec["output_digest"]}
            for name, rec in self.records.items()
        }

    def run_stage(self, index: int, stage: Stage) -> dict[str, Any]:
        missing = [r for r in stage.reads if r not in self.records]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} reads {missing}, which have not run")
        final = self.stage_dir(index, stage.name)
        old = read_record(final)
        config_digest = digest_json({"config": stage.config, "salt": stage.salt})
        input_digests = {r: self.records[r]["output_digest"] for r in stage.reads}
        keyed: dict[str, Any] = {"config": config_digest, "inputs": input_digests}
        sources = {}
        if stage.sources:
            sources = digest_sources(stage.sources, (old or {}).get("sources"))
            keyed["sources"] = sources_key(sources)
        key = digest_json(keyed)

        work = self.run_dir / ".work" / f"{stage.name}-{key[:12]}"
        if old is not None and old.get("key") == key and self._outputs_intact(final, old):
            self.log(f"[{stage.name}] up to date, skipped ({final.name})")
            if self.is_writer:  # a run killed between the swap and this removal left it
                shutil.rmtree(work, ignore_errors=True)
            self.records[stage.name], self.dirs[stage.name] = old, final
            return old

        self.log(f"[{stage.name}] running -> {final}")
        work.mkdir(parents=True, exist_ok=True)
        if self.is_writer:
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            tmp.mkdir(parents=True)
        else:
            # The other processes of a multi-host job run the stage too (its collectives
            # need them) but write into private scratch, outside the shared run dir.
            tmp = Path(tempfile.mkdtemp(prefix=f"semievol-{final.name}-"))
        ctx = StageContext(
            out=tmp,
            work=work,
            inputs={r: self.dirs[r] for r in stage.reads},
            config=stage.config,
            sources=sources,
        )
        start = time.perf_counter()
        try:
            metrics = stage.fn(ctx) or {}
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left
            raise
        finally:
            # The next stage's peak starts from what is live; when asked, without this
            # stage's compiled programs (the next loads another model, compiles other
            # shapes, and takes any it shares back from the persistent cache).
            release_free_memory(compiled_programs=drop_programs_between_stages())
        outputs = digest_dir(tmp)
        record = {
            "stage": stage.name,
            "key": key,
            "config": to_jsonable(stage.config),
            "salt": to_jsonable(stage.salt),
            "config_digest": config_digest,
            "input_digests": input_digests,
            **({"sources": sources} if sources else {}),
            "outputs": outputs,
            "output_digest": digest_json(outputs),
            "metrics": to_jsonable(metrics),
            "wall_s": round(time.perf_counter() - start, 3),
        }
        write_json_atomic(tmp / RECORD, record)
        # Multi-host: process 0 swaps its directory in once every process has finished
        # the stage (none still reads `work`), and nobody moves on before it is in place.
        self.sync(f"{final.name}: done")
        if self.is_writer:
            self._replace_dir(tmp, final)
            shutil.rmtree(work, ignore_errors=True)  # finished: resumable state not needed
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        self.sync(f"{final.name}: in place")
        if not self.is_writer:
            record = self._writers_record(final, key)
        self.log(f"[{stage.name}] done in {record['wall_s']:.1f}s, "
                 f"digest {record['output_digest'][:12]}")
        self.records[stage.name], self.dirs[stage.name] = record, final
        return record

    @staticmethod
    def _writers_record(final: Path, key: str) -> dict[str, Any]:
        """Process 0's record of a stage, which downstream keys must chain from on every
        process (a shared filesystem is assumed, as for checkpoints)."""
        rec = read_record(final)
        if rec is None or rec.get("key") != key:
            raise RuntimeError(f"{final}: process 0's stage record is not visible here; the "
                               "run directory must be on a filesystem all hosts share")
        return rec

    @staticmethod
    def _outputs_intact(stage_dir: Path, record: Mapping[str, Any]) -> bool:
        return digest_dir(stage_dir) == record.get("outputs")

    @staticmethod
    def _replace_dir(tmp: Path, final: Path) -> None:
        """Swap `tmp` into `final`; the old directory is removed only after the swap."""
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)


def _is_round_dir(d: Path) -> bool:
    """A later round of a run: `round<r>/` beside the run's config.yaml (graph.py)."""
    return (d.name.startswith(ROUND_PREFIX) and d.name[len(ROUND_PREFIX):].isdigit()
            and (d.parent / "config.yaml").exists())


def round_dirs(run_dir: Path) -> list[Path]:
    """The run's later-round directories, in round order (round2, round3, ..., round10)."""
    found = [d for d in Path(run_dir).glob(ROUND_PREFIX + "*") if d.is_dir() and _is_round_dir(d)]
    return sorted(found, key=lambda d: int(d.name[len(ROUND_PREFIX):]))


def process_barrier(name: str) -> None:
    """Wait for every process of a jax.distributed job; nothing in a single process.

    A process that never imported JAX, or never joined a distributed job, is alone.
    """
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return
    from semievol_jax.sharding import barrier  # imports JAX: only where it runs already

    barrier(name)


def run_manifests(root: Path) -> list[Path]:
    """Every run's manifest under `root` (a run dir holds config.yaml beside it, a later
    round of a run sits in `round<r>/` beside it; stage outputs may carry manifests of
    their own, e.g. a saved index)."""
    return [p for p in sorted(Path(root).rglob(MANIFEST))
            if (p.parent / "config.yaml").exists() or _is_round_dir(p.parent)]


def status(run_dir: Path) -> list[dict[str, Any]]:
    """One row per stage directory found in `run_dir` and its later rounds (for
    `semievol status`); a later round's rows are named `round<r>/NN_stage`."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory (a run directory holds NN_stage/ "
                        "folders)")
    rows = []
    for sub in (run_dir, *round_dirs(run_dir)):
        prefix = "" if sub == run_dir else f"{sub.name}/"
        for d in sorted(sub.glob("[0-9][0-9]_*")):
            rec = read_record(d)
            intact = rec is not None and digest_dir(d) == rec.get("outputs")
            rows.append(
                {
                    "stage": prefix + d.name,
                    "state": "done" if intact else ("modified" if rec else "incomplete"),
                    "wall_s": rec.get("wall_s") if rec else None,
                    "output_digest": (rec or {}).get("output_digest", "")[:12],
                }
            )
        for d in sorted(sub.glob(".work/*")):
            rows.append({"stage": prefix + d.name, "state": "resumable", "wall_s": None,
                         "output_digest": ""})
    return rows


def digest_table(root: Path) -> dict[str, dict[str, str]]:
    """{sub-run: {stage: output digest}} of every run under `root` (from their
    manifests), or, where no stage directory is left, the committed `digests.json`.

    Raises:
      UserError: neither manifests nor a digests.json under `root`.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such run directory")
    if manifests := run_manifests(root):
        return {str(mf.parent.relative_to(root)): read_manifest(mf) for mf in manifests}
    if (root / DIGESTS).exists():
        table = read_json_file(root / DIGESTS, "digest table")
        if not (isinstance(table, dict) and all(
                isinstance(v, dict) and all(isinstance(d, str) for d in v.values())
                for v in table.values())):
            raise UserError(f"{root / DIGESTS}: not a digest table "
                            "({sub-run: {stage: digest}})")
        return table
    raise UserError(f"{root}: no {MANIFEST} and no {DIGESTS} found")


def read_manifest(path: Path) -> dict[str, str]:
    """{stage: output digest} of a run's manifest.json, or one UserError naming it."""
    entries = read_json_file(path, "manifest")
    try:
        return {k: v["output_digest"] for k, v in entries.items()}
    except (AttributeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a run manifest (no output_digest in an entry)") from e
