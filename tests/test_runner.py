"""Stage runner: atomic directories, records, skip / rerun / resume semantics."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from semievol_jax.pipeline.runner import Runner, Stage, status


@dataclass(frozen=True)
class Cfg:
    value: int = 1


def make_stages(calls, a_value=1, b_value=2):
    def a(ctx):
        calls.append("a")
        (ctx.out / "a.txt").write_text(str(ctx.config.value))
        return {"n": ctx.config.value}

    def b(ctx):
        calls.append("b")
        got = int((ctx.inputs["a"] / "a.txt").read_text())
        (ctx.out / "b.txt").write_text(str(got + ctx.config.value))
        (ctx.out / "logs").mkdir()
        (ctx.out / "logs" / "events").write_text(str(os.getpid()))  # not digested

    return [Stage("a", a, Cfg(a_value)), Stage("b", b, Cfg(b_value), reads=("a",))]


def test_run_skip_and_partial_rerun(tmp_path):
    calls = []
    recs = Runner(tmp_path, log=lambda *_: None).run(make_stages(calls))
    assert calls == ["a", "b"]
    assert (tmp_path / "01_b" / "b.txt").read_text() == "3"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["b"]["output_digest"] == recs["b"]["output_digest"]

    calls.clear()
    Runner(tmp_path, log=lambda *_: None).run(make_stages(calls))
    assert calls == []  # everything up to date

    calls.clear()
    Runner(tmp_path, log=lambda *_: None).run(make_stages(calls, b_value=5))
    assert calls == ["b"]  # only the changed stage
    assert (tmp_path / "01_b" / "b.txt").read_text() == "6"

    calls.clear()
    Runner(tmp_path, log=lambda *_: None).run(make_stages(calls, a_value=2, b_value=5))
    assert calls == ["a", "b"]  # upstream change propagates through the digest


def test_tampered_output_reruns(tmp_path):
    calls = []
    Runner(tmp_path, log=lambda *_: None).run(make_stages(calls))
    (tmp_path / "00_a" / "a.txt").write_text("999")
    calls.clear()
    Runner(tmp_path, log=lambda *_: None).run(make_stages(calls))
    assert calls == ["a", "b"] or calls == ["a"]
    assert (tmp_path / "00_a" / "a.txt").read_text() == "1"
    assert [r["state"] for r in status(tmp_path)] == ["done", "done"]


def test_failure_leaves_nothing_half_written(tmp_path):
    def boom(ctx):
        (ctx.out / "partial.txt").write_text("x")
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        Runner(tmp_path, log=lambda *_: None).run([Stage("a", boom, Cfg())])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != ".work"]
    assert leftovers == []


def test_sigkill_mid_stage_then_resume(tmp_path):
    """A stage killed mid-write leaves no stage dir; the rerun completes identically."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from dataclasses import dataclass
        from semievol_jax.pipeline.runner import Runner, Stage
        @dataclass(frozen=True)
        class C:
            v: int = 1
        def a(ctx):
            (ctx.out / "a.txt").write_text("A")
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        Runner(r"{tmp_path}", log=lambda *_: None).run([Stage("a", a, C())])
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, "kill"])
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "00_a").exists()
    done = subprocess.run([sys.executable, "-c", script, "ok"])
    assert done.returncode == 0
    assert (tmp_path / "00_a" / "a.txt").read_text() == "A"
    assert not any(p.name.startswith(".00_a.tmp") for p in tmp_path.iterdir())


def test_adopt_shares_a_finished_stage(tmp_path):
    calls = []
    Runner(tmp_path / "main", log=lambda *_: None).run(make_stages(calls))
    calls.clear()
    variant = Runner(tmp_path / "variant", log=lambda *_: None)
    variant.adopt("a", tmp_path / "main" / "00_a")
    variant.run(make_stages(calls)[1:])
    assert calls == ["b"]
    assert (tmp_path / "variant" / "00_b" / "b.txt").read_text() == "3"
    manifest = json.loads((tmp_path / "variant" / "manifest.json").read_text())
    assert manifest["a"]["dir"] == "../main/00_a"


def test_a_setting_at_its_omitted_value_keeps_records_and_keys():
    """SampleConfig.key_layout at "SH" and unroll_layers off are left out of records and
    stage keys, so runs made before the settings existed keep their keys; "HS" or
    unrolled layers are named and key apart."""
    import dataclasses

    from semievol_jax.files import to_jsonable
    from semievol_jax.generate.sampling import SampleConfig
    from semievol_jax.pipeline.runner import digest_json

    default = SampleConfig()
    before = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)
              if f.name not in ("key_layout", "unroll_layers")}
    assert to_jsonable(default) == to_jsonable(before)
    assert digest_json(default) == digest_json(before)
    for name, value in (("key_layout", "HS"), ("unroll_layers", True)):
        other = SampleConfig(**{name: value})
        assert to_jsonable(other)[name] == value
        assert digest_json(other) != digest_json(default)


@pytest.mark.parametrize("persistent,asked", [(True, True), (False, True), (True, False)])
def test_compiled_programs_dropped_after_a_stage_only_when_asked_and_cached(
        tmp_path, monkeypatch, persistent, asked):
    """A 30-layer model's programs hold tens of MB each; between stages they are dropped
    when asked ($SEMIEVOL_DROP_PROGRAMS=1) and the persistent compilation cache can give
    them back, and kept otherwise."""
    import jax
    import jax.numpy as jnp
    from jax.experimental.compilation_cache import compilation_cache

    from semievol_jax.environment import DROP_PROGRAMS_ENV, drop_programs_between_stages

    double = jax.jit(lambda x: x * 2)

    def stage(ctx):
        double(jnp.ones(3)).block_until_ready()
        assert double._cache_size() == 1
        (ctx.out / "done").write_text("1")

    monkeypatch.setenv(DROP_PROGRAMS_ENV, "1" if asked else "0")
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla") if persistent else None)
    try:
        assert drop_programs_between_stages() is (persistent and asked)
        Runner(tmp_path / "run", log=lambda *_: None).run([Stage("a", stage, Cfg())])
        assert double._cache_size() == (0 if persistent and asked else 1)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        compilation_cache.reset_cache()  # later tests start from the process's own setting
