"""Resume under fire: one run killed with SIGKILL at a dozen points spread over every stage
(mid-checkpoint write, mid-generation, a stage's files written but not its record, a
stage in place but its scratch not yet removed), each time resumed; every stage finished
along the way, and the final run, have the digests of an uninterrupted run.

The kill points are hooks the run's own process installs (an orbax checkpoint about to be
renamed into place, the k-th decoded sample, a stage's temporary directory being
digested, a stage directory just swapped in), so each lands where it is meant to, on any
machine, at any speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_pipeline_e2e import tiny_overrides

from semievol_jax.pipeline.runner import digest_dir, read_record

HOOKED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path

    kind, _, arg = os.environ["KILL_AT"].partition(":")
    calls = {"n": 0}

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def counted(n):
        calls["n"] += 1
        if calls["n"] == n:
            die()

    if kind == "finalize":  # an orbax checkpoint written, not yet renamed into place
        from orbax.checkpoint._src.path import atomicity
        real = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self, *a, **k):
            counted(int(arg))
            return await real(self, *a, **k)
        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    elif kind == "sample":  # the k-th sample decoded: mid-generation
        from semievol_jax.generate import generator
        real = generator._to_sample

        def to_sample(*a, **k):
            counted(int(arg))
            return real(*a, **k)
        generator._to_sample = to_sample
    elif kind in ("written", "placed"):
        from semievol_jax.pipeline import runner
        if kind == "written":  # the stage's files are in its temporary dir, no record yet
            real = runner.digest_dir

            def digest_dir(root):
                if Path(root).name.startswith(f".{arg}.tmp-"):
                    die()
                return real(root)
            runner.digest_dir = digest_dir
        else:  # the stage is in place; its scratch and the manifest are not yet updated
            real = runner.Runner._replace_dir

            def replace_dir(tmp, final):
                real(tmp, final)
                if final.name == arg:
                    die()
            runner.Runner._replace_dir = staticmethod(replace_dir)

    from semievol_jax.config import load_config
    from semievol_jax.environment import enable_compilation_cache
    from semievol_jax.pipeline.config import RunConfig
    enable_compilation_cache()  # the same programs, compiled once for all the restarts
    from semievol_jax.pipeline.graph import run_pipeline
    run_pipeline(load_config(RunConfig, None, sys.argv[2:]), Path(sys.argv[1]))
""")

# In order: each resumed process dies at the next point (counts are per process).
KILL_POINTS = [
    "written:00_data",
    "placed:01_base",
    "finalize:1",  # sft's first checkpoint (step 2) mid-write: the next process starts over
    "finalize:2",  # step 2 lands, step 4 dies mid-write: the next process resumes at 2
    "written:02_sft",
    "written:03_index",
    "sample:13",  # propose: the first sample of its second batch
    "placed:04_propose",
    "written:05_select",
    "finalize:1",  # final tuning's first checkpoint mid-write
    "written:06_final",
    "sample:10",  # eval: mid-generation of the test answers
    "placed:07_eval",
]
STAGES = ["00_data", "01_base", "02_sft", "03_index", "04_propose", "05_select", "06_final",
          "07_eval"]


def overrides(ckpt: Path, task: Path) -> list[str]:
    """The e2e tiny run, with enough steps for several checkpoints and batches."""
    return tiny_overrides(ckpt, task) + [
        "sft.train.epochs=3", "final.train.epochs=3", "propose.sample.batch_size=4",
        "eval.sample.batch_size=4", "select.reflect_sample.batch_size=4"]


def run(run_dir: Path, over: list[str], kill_at: str | None) -> int:
    env = {**os.environ, "KILL_AT": kill_at or "none:"}
    return subprocess.run([sys.executable, "-c", HOOKED_RUN, str(run_dir), *over], env=env,
                          capture_output=True, text=True).returncode


def finished(run_dir: Path) -> dict[str, str]:
    """Output digest of every stage directory whose record matches its files; fails on a
    stage directory without one (a half-written stage in place)."""
    out = {}
    for d in sorted(run_dir.glob("[0-9][0-9]_*")):
        rec = read_record(d)
        assert rec is not None and digest_dir(d) == rec["outputs"], f"{d.name} half-written"
        out[d.name] = rec["output_digest"]
    return out


@pytest.mark.slow
def test_killed_at_every_stage_resumes_to_the_same_digests(tmp_path, tiny_ckpt_dir,
                                                           tiny_task):
    over = overrides(tiny_ckpt_dir, tiny_task)
    ref = tmp_path / "ref"
    assert run(ref, over, None) == 0
    want = finished(ref)
    assert list(want) == STAGES

    run_dir = tmp_path / "run"
    for point in KILL_POINTS:
        assert run(run_dir, over, point) == -signal.SIGKILL, f"{point}: the run was not killed"
        got = finished(run_dir)
        assert got == {k: want[k] for k in got}, point
    assert run(run_dir, over, None) == 0
    assert finished(run_dir) == want
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {v["dir"]: v["output_digest"] for v in manifest.values()} == want
    assert not list(run_dir.glob(".[0-9][0-9]_*")), "a killed run's temporaries are left"
    assert not any((run_dir / ".work").iterdir()), "a finished stage's scratch is left"
