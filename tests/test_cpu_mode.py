"""The CPU mode: its flags reach XLA before the backend starts, it is what XLA_FLAGS says,
and records and `verify` carry it (the reproducible mode's digests do not depend on the
kind of CPU; the native mode's do)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from semievol_jax import environment
from semievol_jax.errors import UserError
from semievol_jax.pipeline import verify

REPRO_FLAG = " ".join(environment.CPU_MODES["reproducible"])

# A fresh process: the flags as the CLI sets them, then a program whose bits the mode
# decides. In the reproducible mode rsqrt is 1 / sqrt(x), correctly rounded twice, so it
# equals numpy's on every machine; natively, on x86 with AVX, it is the hardware's
# approximation refined by Newton steps, which differs in the last bit for many inputs.
CHILD = """
import json, os, sys
import numpy as np
from semievol_jax import environment
mode = environment.set_determinism_flags()
import jax
x = np.abs(np.random.default_rng(0).standard_normal(4096).astype(np.float32)) + 0.1
y = np.asarray(jax.jit(jax.lax.rsqrt)(x))
print(json.dumps({"mode": mode, "flags": os.environ["XLA_FLAGS"],
                  "env": os.environ[environment.CPU_MODE_ENV],
                  "differs_from_exact": int((y != np.float32(1) / np.sqrt(x)).sum())}))
"""


def _child(mode: str | None, xla_flags: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != environment.CPU_MODE_ENV}
    env["XLA_FLAGS"] = xla_flags
    if mode is not None:
        env[environment.CPU_MODE_ENV] = mode
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _has_avx2() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and "avx2" in \
        environment.cpu_info()["simd"]


def test_the_default_mode_reaches_xla_before_the_backend_starts():
    r = _child(None)
    assert r["mode"] == r["env"] == "reproducible" and REPRO_FLAG in r["flags"]
    assert "--xla_gpu_deterministic_ops=true" in r["flags"]
    assert r["differs_from_exact"] == 0


def test_the_native_mode_is_xlas_default_math():
    r = _child("native")
    assert r["mode"] == r["env"] == "native" and REPRO_FLAG not in r["flags"]
    if _has_avx2():  # elsewhere XLA falls back to 1 / sqrt(x) in every mode
        assert r["differs_from_exact"] > 0


def test_xla_flags_given_by_the_user_win():
    r = _child("reproducible", "--xla_cpu_enable_platform_dependent_math=true")
    assert r["mode"] == "native"  # what the backend really runs, recorded as such
    assert r["flags"].count("platform_dependent_math") == 1


def test_mode_in_effect_reads_the_last_occurrence_as_xla_does():
    assert environment.cpu_mode_in_effect(REPRO_FLAG) == "reproducible"
    assert environment.cpu_mode_in_effect("") == "native"
    assert environment.cpu_mode_in_effect(REPRO_FLAG.split()[0]) == \
        ("native" if len(REPRO_FLAG.split()) > 1 else "reproducible")
    assert environment.cpu_mode_in_effect(
        f"{REPRO_FLAG} --xla_cpu_enable_platform_dependent_math=true") == "native"
    assert environment.cpu_mode_in_effect(
        f"--xla_cpu_enable_platform_dependent_math=true --xla_foo=1 {REPRO_FLAG}") \
        == "reproducible"


def test_an_unknown_mode_is_a_user_error(monkeypatch):
    monkeypatch.setenv(environment.CPU_MODE_ENV, "fastest")
    with pytest.raises(UserError, match="SEMIEVOL_CPU_MODE must be one of"):
        environment.requested_cpu_mode()


def test_this_test_process_runs_in_the_clis_default_mode():
    # conftest sets it before any backend starts, as the CLI does
    assert environment.cpu_mode_in_effect() == environment.DEFAULT_CPU_MODE
    assert environment.describe()["cpu_mode"] == environment.DEFAULT_CPU_MODE
    assert "cpu mode      reproducible" in environment.format_env(environment.describe())


def _summary(path, digest, mode=None, cpu=None):
    path.mkdir()
    digests = {"seed0": {"base": digest}}
    if mode is not None:
        digests[environment.CPU_MODE_KEY] = {"mode": mode, "xla_flags": ""}
    (path / "digests.json").write_text(json.dumps(digests))
    if cpu is not None:
        (path / "provenance.json").write_text(json.dumps(
            {"kind": "demo", "args": {"quick": True, "overrides": []},
             "machine": {"cpu": cpu}}))
    return path


CPU_A = {"model": "AMD EPYC", "family": "25/17", "simd": ["avx2", "avx512f"]}
CPU_B = {"model": "AMD EPYC", "family": "25/1", "simd": ["avx2"]}


def test_verify_reads_the_mode_beside_the_digests(tmp_path, capsys):
    a = _summary(tmp_path / "a", "aa" * 32, "reproducible", CPU_A)
    b = _summary(tmp_path / "b", "aa" * 32, "reproducible", CPU_B)
    assert verify.recorded_cpu_mode(a) == "reproducible"
    assert verify.verify(a, fresh=str(b)) == 0  # the mode's record is not a stage
    assert "fresh run reproduces every digest" in capsys.readouterr().out


def test_verify_tells_another_mode_from_other_bits(tmp_path, capsys):
    a = _summary(tmp_path / "a", "aa" * 32, "reproducible", CPU_A)
    native = _summary(tmp_path / "n", "bb" * 32, None, CPU_A)  # made before modes: native
    assert verify.verify(a, fresh=str(native)) == 1
    out = capsys.readouterr().out
    assert "first difference: seed0/base" in out
    assert "made in CPU mode 'reproducible', the rerun in 'native'" in out
    other = _summary(tmp_path / "o", "cc" * 32, "reproducible", CPU_B)
    assert verify.verify(a, fresh=str(other)) == 1
    out = capsys.readouterr().out
    assert "same CPU mode 'reproducible', different bits (AMD EPYC (family 25/17; " \
           "avx2+avx512f) and AMD EPYC (family 25/1; avx2))" in out
    assert "semievol selftest" in out


def test_before_a_rerun_verify_says_when_this_machine_runs_another_mode(tmp_path):
    a = _summary(tmp_path / "a", "aa" * 32, "native", CPU_A)
    note = verify.hardware_note(a)  # this test process: the reproducible mode
    assert note.startswith(f"note: {a} was made in CPU mode 'native', the rerun in "
                           "'reproducible'")
    assert "SEMIEVOL_CPU_MODE=native reruns in its mode" in note
    b = _summary(tmp_path / "b", "aa" * 32, "reproducible", CPU_B)
    assert verify.hardware_note(b) is None  # same mode: nothing to warn of yet
