"""The job list behind `semievol demo --jobs N` and its scheduler's checks (the runs
themselves, in worker processes, are compared with a sequential run in
tests/test_demo_repro.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from semievol_jax import environment
from semievol_jax.pipeline import parallel


def _job(name, after=()):
    return parallel.Job(name, cfg=None, run_dir=Path(name), after=after)


def test_jobs_must_be_listed_after_what_they_adopt():
    parallel._check([_job("a"), _job("b", ("a",))])
    with pytest.raises(ValueError, match="'b' runs after \\['a'\\]"):
        parallel._check([_job("b", ("a",)), _job("a")])
    with pytest.raises(ValueError, match="unique"):
        parallel._check([_job("a"), _job("a")])


def test_in_process_run_keeps_the_listed_order(monkeypatch):
    seen = []
    monkeypatch.setattr(parallel, "_run", lambda job, mesh=None: seen.append(job.name) or
                        {"eval": {"job": job.name}})
    jobs = [_job("a"), _job("b", ("a",)), _job("c", ("a",))]
    out = parallel.run_jobs(jobs)  # no workers: here, in order
    assert seen == ["a", "b", "c"]
    assert list(out) == ["a", "b", "c"] and out["c"] == {"eval": {"job": "c"}}


def test_malloc_tunables_keep_the_callers_own(monkeypatch):
    monkeypatch.delenv(environment.MALLOC_ENV, raising=False)
    got = dict(kv.split("=") for kv in parallel.malloc_tunables(None).split(":"))
    assert got == parallel.GLIBC_TUNABLES
    mine = parallel.malloc_tunables("glibc.malloc.arena_max=4:glibc.foo=1")
    got = dict(kv.split("=") for kv in mine.split(":"))
    assert got["glibc.malloc.arena_max"] == "4" and got["glibc.foo"] == "1"
    assert got["glibc.malloc.mmap_max"] == "0"
    monkeypatch.setenv(environment.MALLOC_ENV, "off")
    assert parallel.malloc_tunables(None) is None
    assert parallel.malloc_tunables("glibc.foo=1") == "glibc.foo=1"


def test_default_workers_is_one_per_core_up_to_four():
    assert parallel.default_workers() == max(1, min(len(parallel.usable_cores()), 4))


def test_demo_jobs_share_the_first_seeds_base_and_sweep_it_only(tmp_path):
    from semievol_jax.config import load_config
    from semievol_jax.demo.driver import demo_variants
    from semievol_jax.pipeline.config import RunConfig
    from semievol_jax.study import ablation_variants, study_jobs

    cfg = load_config(RunConfig, "demo", [])

    def seed_variants(c, sweep):
        return ablation_variants(c) | demo_variants(c, sweep=sweep)

    jobs = study_jobs(cfg, tmp_path, (0, 1, 2), lambda c: seed_variants(c, c.seed == 0))
    by = {j.name: j for j in jobs}
    parallel._check(jobs)
    assert jobs[0].name == "seed0/base" and jobs[0].stop_after == "base"
    assert [j.name for j in jobs[1:4]] == ["seed0/semievol", "seed1/semievol", "seed2/semievol"]
    assert all(by[f"seed{s}/semievol"].after == ("seed0/base",) for s in (0, 1, 2))
    assert by["seed0/semievol"].shared is None  # it resumes its own data and base
    seed0 = tmp_path / "seed0"
    assert by["seed2/semievol"].shared == {"data": seed0 / "00_data", "base": seed0 / "01_base"}
    n0 = len(seed_variants(cfg, sweep=True))
    n1 = len(seed_variants(cfg, sweep=False))
    assert n0 > n1 > 0 and len(jobs) == 1 + 3 + n0 + 2 * n1
    sweep = [j for j in jobs if "/sweep/" in str(j.run_dir)]
    assert sweep and all(j.name.startswith("seed0/") for j in sweep)
    # A variant adopts its own seed's M1 (it changes nothing up to the SFT stage).
    v = by["seed1/no_cl"]
    assert v.after == ("seed1/semievol",)
    assert v.shared["sft"] == tmp_path / "seed1" / "02_sft"
    assert v.run_dir == tmp_path / "seed1" / "ablations" / "no_cl"
    # Variants run longest first: those proposing with demonstrations, then n = 8, ...
    costs = [j.cfg.propose.n * (1 + j.cfg.index.k) for j in jobs[4:]]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
    assert {j.name for j in jobs[4:7]} == {f"seed{s}/with_icp" for s in (0, 1, 2)}


def test_worker_count_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        parallel.run_jobs([_job("a")], workers=0)


def test_a_workers_mesh_does_not_warn_about_xla_flags(caplog):
    """A worker sets its XLA flags before its backend starts (`_worker_init`); making a
    job's mesh afterwards must not re-run the runtime set-up, whose check would then
    warn that the flags no longer apply."""
    import logging

    import jax

    from semievol_jax.config import load_config
    from semievol_jax.pipeline.config import RunConfig
    from semievol_jax.pipeline.graph import make_mesh

    cfg = load_config(RunConfig, "demo", [])
    jax.devices()  # the backend is up, as in a worker after its initialiser
    with caplog.at_level(logging.WARNING, logger="semievol_jax.sharding"):
        make_mesh(cfg)  # the in-process path does the set-up, and says it is late
    assert "XLA_FLAGS changes will not apply" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semievol_jax.sharding"):
        mesh = parallel._worker_mesh(cfg)
    assert caplog.text == "" and mesh.devices.size == len(jax.devices())
