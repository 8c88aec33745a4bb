"""Runner in a multi-host job: only process 0 writes the run dir; the others run the stage
into private scratch, wait for process 0, and chain from its record."""

from __future__ import annotations

import pytest

from semievol_jax.pipeline.runner import Runner, Stage, read_record


def quiet(*_):
    pass


def test_other_processes_write_nothing_shared_and_take_process0_record(tmp_path):
    run = tmp_path / "run"
    outs = []

    def fn(ctx):
        outs.append(ctx.out)
        (ctx.out / "a.txt").write_text("same on every process")
        return {"n": 1}

    stage = Stage("s", fn, config={"k": 1})
    writer = Runner(run, is_writer=True, log=quiet, sync=lambda _: None)
    names = []

    def sync(name):  # process 1's barrier: process 0 runs the same stage meanwhile
        names.append(name)
        if name.endswith(": done"):
            writer.run_stage(0, stage)

    other = Runner(run, is_writer=False, log=quiet, sync=sync)
    rec = other.run_stage(0, stage)
    assert names == ["00_s: done", "00_s: in place"]
    assert rec == read_record(run / "00_s")  # process 0's record (its wall_s), not its own
    assert sorted(p.name for p in run.iterdir()) == [".work", "00_s"]
    assert run not in outs[0].parents and not outs[0].exists()  # private scratch, removed
    # A stage skipped as up to date needs no barrier: every process reads the same record.
    names.clear()
    assert other.run_stage(0, stage) == rec and names == []


def test_record_not_visible_to_other_process_is_a_clear_error(tmp_path):
    stage = Stage("s", lambda ctx: None, config={})
    other = Runner(tmp_path / "run", is_writer=False, log=quiet, sync=lambda _: None)
    with pytest.raises(RuntimeError, match="filesystem all hosts share"):
        other.run_stage(0, stage)
