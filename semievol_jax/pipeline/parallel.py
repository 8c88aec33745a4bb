"""Pipeline runs (a demo's seeds, ablations and sweep) in single-core worker processes.

Why one core per process: XLA's CPU results depend on how many cores the process may
use. Its kernels split work by the intra-op thread count, so the same seed trains a
different M1 on one core than on two (the gradient norm differs in its last bits after
a few steps), and with more than one thread a compiled program can
even return different results from call to call (jax-ml/jax#39741). Pinned to one core,
a run's digests depend only on the kind of CPU, not on how many cores the machine has
or how many workers share them.

Why processes: the runs that share a finished prefix (the base, M1) are independent,
and single-core processes keep the cores busier than one multi-threaded process, whose
small kernels wait on each other.

Workers are spawned (JAX does not survive a fork), share the persistent compilation
cache, and run with malloc settings that spare XLA's temporaries the page faults
(`GLIBC_TUNABLES`).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import gc
import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from semievol_jax import environment, sharding
from semievol_jax.pipeline.graph import run_pipeline

# With glibc's defaults, each thread's malloc arena hands large freed blocks back to the
# kernel, so every XLA step faults its temporaries in again (a fifth of a demo's CPU time
# in the kernel, in minor faults). One arena, no mmap'd blocks and a high trim threshold
# keep them, with the same digests. Workers get these unless SEMIEVOL_MALLOC=off (other
# C libraries ignore the variable).
GLIBC_TUNABLES = {"glibc.malloc.arena_max": "1", "glibc.malloc.mmap_max": "0",
                  "glibc.malloc.trim_threshold": str(256 << 20)}


@dataclasses.dataclass(frozen=True)
class Job:
    """One pipeline run: `run_pipeline(cfg, run_dir, shared=shared, stop_after=...)`.

    Attributes:
      name: unique key of the job (its records are returned under it).
      cfg: the run's config.
      run_dir: where it writes.
      shared: finished stages it adopts, stage name -> directory.
      after: names of the jobs that must finish first (they make its shared stages).
      stop_after: run round 1 only up to this stage (a prefix other jobs adopt).
    """

    name: str
    cfg: Any
    run_dir: Path
    shared: dict[str, Path] | None = None
    after: tuple[str, ...] = ()
    stop_after: str | None = None


def usable_cores() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_workers() -> int:
    """One worker per usable core, at most 4 (each holds ~1-2 GB of JAX and model state)."""
    return max(1, min(len(usable_cores()), 4))


def malloc_tunables(current: str | None = None) -> str | None:
    """GLIBC_TUNABLES for the workers: `current` (the caller's) plus `GLIBC_TUNABLES` for
    the keys it does not set; `current` unchanged when SEMIEVOL_MALLOC=off."""
    if os.environ.get(environment.MALLOC_ENV, "") == "off":
        return current
    given = environment.glibc_tunables(current)
    return ":".join(f"{k}={v}" for k, v in {**GLIBC_TUNABLES, **given}.items())


def _check(jobs: Sequence[Job]) -> None:
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    seen: set[str] = set()
    for j in jobs:  # listed in an order that respects `after`: a sequential run's order
        if missing := [a for a in j.after if a not in seen]:
            raise ValueError(f"job {j.name!r} runs after {missing}, listed later or not at all")
        seen.add(j.name)


def _run(job: Job, mesh=None) -> dict[str, dict[str, Any]]:
    return run_pipeline(job.cfg, job.run_dir, mesh=mesh, shared=job.shared,
                            stop_after=job.stop_after)


_WORKER_MESH: dict[str, Any] = {}


def pin_to_one_core(core: int | None = None) -> None:
    """Run this process on one core (default: the first usable one), as the demo's
    workers do, so its XLA results match theirs. Call it before JAX starts a backend:
    XLA sizes its CPU thread pools to the affinity then."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [usable_cores()[0] if core is None else core])


def _worker_init(cores: Any, cache: str | None) -> None:
    pin_to_one_core(cores.get())
    # The flags before the backend starts (below); a worker never joins a multi-host
    # job, so this is all of `sharding.initialize_runtime` it needs.
    environment.set_determinism_flags()
    if cache:
        environment.enable_compilation_cache(cache)
    # Pay for transformers (tokenizers and configs load through it; imported here, not
    # at the top, since only the workers need it) and the backend now, while the pool
    # starts (every worker at once, while the first job runs), not at each worker's
    # first job. Then move what they allocated out of the garbage collector's sight, so
    # its full passes (frequent while JAX traces) skip those objects.
    import transformers  # noqa: F401

    jax.devices()
    gc.freeze()


def _ready() -> None:
    """A no-op job: submitting one per worker makes the pool start them all at once."""


def _worker_mesh(cfg) -> Any:
    """The mesh of a job's config, made once per worker (its runtime is set up already,
    in `_worker_init`, before the backend started)."""
    key = repr(cfg.mesh)
    if key not in _WORKER_MESH:
        if cfg.mesh.distributed:
            raise ValueError("a worker process cannot join a multi-host job "
                             "(mesh.distributed=true); run it with workers=None")
        _WORKER_MESH[key] = sharding.make_mesh(cfg.mesh)
    return _WORKER_MESH[key]


def _worker_run(job: Job) -> dict[str, dict[str, Any]]:
    return _run(job, _worker_mesh(job.cfg))


def _run_pool(jobs: Sequence[Job], workers: int,
              done: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Run `jobs` in `workers` spawned processes, each pinned to one core (round robin), as
    soon as the jobs they come after are in `done`; adds their records to `done`."""
    cores = usable_cores()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    for i in range(workers):
        queue.put(cores[i % len(cores)])
    pending = list(jobs)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(queue, jax.config.jax_compilation_cache_dir)) as pool:
        # The pool spawns a worker only when a job finds none idle: without these, the
        # second worker would start (and import) only after the shared base is done.
        for f in [pool.submit(_ready) for _ in range(workers)]:
            f.result()
        running: dict[cf.Future, Job] = {}
        while pending or running:
            for j in [j for j in pending if all(a in done for a in j.after)]:
                pending.remove(j)
                running[pool.submit(_worker_run, j)] = j
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                try:
                    done[job.name] = fut.result()
                except cf.process.BrokenProcessPool as e:
                    raise RuntimeError(
                        f"a worker process died while running {job.name} ({job.run_dir}); "
                        "out of memory? Rerun with fewer workers (finished stages are "
                        "reused)") from e
                except BaseException:
                    for f in running:
                        f.cancel()
                    raise


def run_jobs(jobs: Sequence[Job], *, workers: int | None = None, mesh=None
             ) -> dict[str, dict[str, dict[str, Any]]]:
    """Run `jobs` (listed in an order that respects `after`); returns name -> records.

    workers=None runs them here, one after another, on `mesh` and every core this process
    has (`semievol ablate`: a real model on an accelerator). A number runs each job in
    one of that many single-core worker processes as soon as the jobs it comes after are
    done; the digests are the same for any number. The first failure stops the rest
    (finished stages stay on disk, so a rerun resumes) and is raised.
    """
    _check(jobs)
    if workers is None:
        return {j.name: _run(j, mesh) for j in jobs}
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    old = os.environ.get("GLIBC_TUNABLES")
    if (tunables := malloc_tunables(old)) is not None:
        os.environ["GLIBC_TUNABLES"] = tunables  # read by each spawned worker at start
    done: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        _run_pool(jobs, workers, done)
    finally:
        if old is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = old
    return {j.name: done[j.name] for j in jobs}
