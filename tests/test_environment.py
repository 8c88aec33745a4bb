"""The CPU a run is made on: parsed from /proc/cpuinfo, recorded, and named by `verify`
when digests differ (XLA's CPU programs follow the host's vector units)."""

from __future__ import annotations

import json
import platform

import pytest

from semievol_jax import environment
from semievol_jax.pipeline import verify

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: some other name
flags\t\t: fpu
"""
EPYC_AVX512 = EPYC_AVX2.replace("model\t\t: 1", "model\t\t: 17").replace(
    "avx2 bmi2", "avx2 avx512f avx512bw avx512_vnni bmi2", 1)
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_cpu_info_reads_the_first_processor_and_its_vector_units():
    info = environment.cpu_info(EPYC_AVX2)
    assert info["model"] == "AMD EPYC" and info["vendor"] == "AuthenticAMD"
    assert info["family"] == "25/1" and info["simd"] == ["avx2"]
    assert environment.cpu_kind(info) == "AMD EPYC (family 25/1; avx2)"
    wide = environment.cpu_info(EPYC_AVX512)
    assert wide["simd"] == ["avx2", "avx512f", "avx512bw", "avx512_vnni"]
    # The same "model name" on two kinds of machine: the kinds still differ.
    assert environment.cpu_kind(wide) != environment.cpu_kind(info)
    arm = environment.cpu_info(ARM)
    assert arm["simd"] == ["asimd", "sve"] and arm["family"] == "0xd40"


def test_env_describes_the_cpu():
    info = environment.describe()
    assert info["cpu"]["cores"] >= 1 and isinstance(info["cpu"]["simd"], list)
    assert "cpu " in environment.format_env(info)


def _summary(path, digest, cpu=None):
    path.mkdir()
    (path / "digests.json").write_text(json.dumps({"seed0": {"base": digest}}))
    if cpu is not None:
        (path / "provenance.json").write_text(json.dumps(
            {"kind": "demo", "args": {"quick": True, "overrides": []},
             "machine": {"cpu": environment.cpu_info(cpu)}}))
    return path


def test_verify_names_the_cpus_when_digests_differ(tmp_path, capsys):
    a = _summary(tmp_path / "a", "aa" * 32, EPYC_AVX512)
    b = _summary(tmp_path / "b", "bb" * 32, EPYC_AVX2)
    assert verify.verify(a, fresh=str(b)) == 1
    out = capsys.readouterr().out
    assert "first difference: seed0/base" in out
    assert "was made on AMD EPYC (family 25/17; avx2+avx512f+avx512bw+avx512_vnni), " \
           "the rerun on AMD EPYC (family 25/1; avx2)" in out


def test_verify_says_when_the_expected_run_records_no_cpu(tmp_path, capsys):
    a = _summary(tmp_path / "a", "aa" * 32)
    b = _summary(tmp_path / "b", "bb" * 32, EPYC_AVX2)
    assert verify.verify(a, fresh=str(b)) == 1
    assert "does not record its CPU; this rerun ran on AMD EPYC (family 25/1; avx2)" \
        in capsys.readouterr().out


def test_same_cpu_kind_adds_no_note(tmp_path, capsys):
    a = _summary(tmp_path / "a", "aa" * 32, EPYC_AVX2)
    b = _summary(tmp_path / "b", "bb" * 32, EPYC_AVX2)
    assert verify.hardware_note(a, b) is None
    c = _summary(tmp_path / "c", "aa" * 32, EPYC_AVX2)
    assert verify.verify(a, fresh=str(c)) == 0
    assert "fresh run reproduces every digest" in capsys.readouterr().out


def test_hardware_note_without_a_second_run_is_about_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # this process in the native mode, as the record
    here = environment.cpu_kind(environment.cpu_info())
    a = _summary(tmp_path / "a", "aa" * 32, EPYC_AVX512)
    note = verify.hardware_note(a)
    if here == environment.cpu_kind(environment.cpu_info(EPYC_AVX512)):
        assert note is None
    else:
        assert note.endswith(f"the rerun on {here} (XLA compiles CPU programs for the "
                             "host's vector units, so digests reproduce only on the same "
                             "kind of CPU)")


def _rss_bytes() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


_FREES = """
import sys
import numpy as np
from semievol_jax import environment
if sys.argv[1] == "set":
    assert environment.configure_malloc()
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
mb = int(sys.argv[2])
np.ones((mb << 20) // 8)  # one freed block: glibc's default threshold rises to its size
base = rss()
blocks = [np.ones((mb << 20) // 8) for _ in range(300 // mb)]  # 300 MB
kept = blocks[::5]  # every fifth stays live, so the heap cannot shrink from its top
del blocks
print(rss() - base - len(kept) * (mb << 20))
"""


def _held_after_frees(mode: str, mb: int) -> int:
    import os
    import subprocess
    import sys

    # Without the variables that make configure_malloc stand aside.
    env = {k: v for k, v in os.environ.items()
           if k not in (environment.MALLOC_ENV, "GLIBC_TUNABLES")}
    return int(subprocess.run([sys.executable, "-c", _FREES, mode, str(mb)], check=True,
                              capture_output=True, text=True, env=env).stdout)


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt is glibc's")
def test_configure_malloc_unmaps_large_freed_buffers_and_reuses_small_ones():
    """Freed 20 MB blocks: with glibc's default they stay resident in the heap, with the
    settings each had its own mapping and left with its free. Freed 2 MB blocks (a
    decode step's size) stay in the heap for reuse with the settings too."""
    large = {mode: _held_after_frees(mode, 20) for mode in ("default", "set")}
    assert large["default"] > 100e6, large  # the blocks above the last kept one are trimmed
    assert large["set"] < 40e6, large
    small = _held_after_frees("set", 2)
    assert small > 150e6, small


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"),
                    reason="malloc_trim is glibc's")
def test_release_free_memory_returns_freed_heap_pages():
    """Blocks freed in the middle of the heap stay resident until trimmed."""
    import numpy as np

    environment.release_free_memory()  # free pages left by earlier tests would be reused
    base = _rss_bytes()
    blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # 300 MB of 100 KB heap blocks
    kept = blocks[::10]  # every tenth stays live, so the heap cannot shrink from its top
    del blocks
    held = _rss_bytes() - base
    environment.release_free_memory()
    after = _rss_bytes() - base
    assert held > 200e6, held
    assert after < held / 2, (held, after)
    assert len(kept) == 300


def test_configure_malloc_leaves_the_callers_own_settings(monkeypatch):
    """SEMIEVOL_MALLOC=off, or glibc malloc tunables the process started with (the demo
    workers', a user's), keep the C library as it was: no mallopt is made."""
    monkeypatch.setenv(environment.MALLOC_ENV, "off")
    assert environment.configure_malloc() is False
    monkeypatch.delenv(environment.MALLOC_ENV)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert environment.configure_malloc() is False


def test_configure_malloc_still_sets_what_the_callers_tunables_leave(monkeypatch):
    """Tunables that name none of its settings (huge pages) do not turn it off; the
    demo workers' tunables do."""
    calls = []
    monkeypatch.delenv(environment.MALLOC_ENV, raising=False)
    monkeypatch.setattr(environment, "set_malloc", lambda s: calls.append(dict(s)) or True)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert environment.configure_malloc() is True
    assert calls == [environment.MALLOC_SETTINGS]
    from semievol_jax.pipeline import parallel

    monkeypatch.setenv("GLIBC_TUNABLES", parallel.malloc_tunables("glibc.malloc.hugetlb=1"))
    assert environment.configure_malloc() is False and len(calls) == 1
