"""`semievol selftest`: the comparison with the committed records per CPU mode, what the
CLI prints and its exit code (fake programs, so it takes no time), and, marked slow, the
real programs against results/repro."""

from __future__ import annotations

import json

import pytest

from semievol_jax import cli, environment, selftest

KIND_A = "AMD EPYC (family 25/17; avx2+avx512f)"
KIND_B = "AMD EPYC-Milan Processor (family 25/1; avx2)"
PKGS = {"jax": "0.10.2", "jaxlib": "0.10.2"}


def _record(kind, mode_digests, *, emulated=None, packages=PKGS, file="r.json"):
    return {"cpu_kind": kind, "emulated": emulated, "packages": packages, "file": file,
            "selftest": {m: {"digests": d} for m, d in mode_digests.items()}}


OURS = {"llama_forward": "a1", "lora_step": "b1", "sample": "c1"}


def test_reproducible_mode_compares_with_every_kind():
    recs = [_record(KIND_A, {"reproducible": OURS}),
            _record(KIND_B, {"reproducible": OURS}, emulated="qemu")]
    v = selftest.compare(OURS, "reproducible", recs, cpu_kind="Intel Xeon (6/85; avx2)",
                         packages=PKGS)
    assert v.reproduces and v.notes == ()
    assert v.message == ("this machine reproduces the committed results (CPU mode "
                         f"'reproducible'; the digests committed on {KIND_A}; {KIND_B}, "
                         "emulated)")


def test_the_first_differing_program_is_named_with_the_kinds():
    theirs = {**OURS, "lora_step": "b2", "sample": "c2"}
    recs = [_record(KIND_A, {"reproducible": OURS}), _record(KIND_B, {"reproducible": theirs})]
    v = selftest.compare(OURS, "reproducible", recs, cpu_kind=KIND_A)
    assert not v.reproduces
    assert v.message == (f"program 'lora_step' differs from the digests committed in CPU "
                         f"mode 'reproducible' on {KIND_B} (this machine: {KIND_A}); it "
                         f"equals those of {KIND_A}")


def test_native_digests_compare_only_with_the_same_kind():
    recs = [_record(KIND_A, {"native": {**OURS, "sample": "zz"}}),
            _record(KIND_B, {"native": OURS, "reproducible": OURS})]
    assert selftest.compare(OURS, "native", recs, cpu_kind=KIND_B).reproduces
    v = selftest.compare(OURS, "native", recs, cpu_kind="Intel Xeon (6/85; avx2)")
    assert not v.reproduces
    assert v.message.startswith("no committed digests of CPU mode 'native' for this CPU "
                                "kind (Intel Xeon (6/85; avx2)) to compare with")
    assert KIND_A in v.message and KIND_B in v.message
    v = selftest.compare(OURS, "native", recs, cpu_kind=KIND_A)
    assert not v.reproduces and "program 'sample' differs" in v.message


def test_other_package_versions_are_noted():
    recs = [_record(KIND_A, {"reproducible": OURS}, file="results/repro/a.json")]
    v = selftest.compare(OURS, "reproducible", recs, cpu_kind=KIND_A,
                         packages={"jax": "0.10.2", "jaxlib": "0.11.0"})
    assert v.reproduces
    assert v.notes == ("a.json was made with other versions: jaxlib 0.10.2 there, "
                       "0.11.0 here",)


def test_no_records_is_no_reproduction(tmp_path):
    assert selftest.load_records(tmp_path / "missing") == []
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text("[1]")
    assert selftest.load_records(tmp_path) == []
    v = selftest.compare(OURS, "reproducible", [], cpu_kind=KIND_A)
    assert not v.reproduces and "committed kinds: none" in v.message


@pytest.fixture
def fake_programs(monkeypatch):
    digests = {"llama_forward": "a1" * 32, "sample": "c1" * 32}
    monkeypatch.setattr(selftest, "PROGRAMS", {k: (lambda v=v: v) for k, v in digests.items()})
    return digests


def _write_record(folder, kind, digests):
    folder.mkdir(exist_ok=True)
    rec = _record(kind, {"reproducible": digests, "native": digests})
    (folder / f"{len(list(folder.iterdir()))}.json").write_text(json.dumps(rec))


def test_cli_says_this_machine_reproduces(tmp_path, capsys, fake_programs):
    _write_record(tmp_path, KIND_B, fake_programs)
    assert cli.main(["selftest", "--records", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    here = environment.cpu_kind(environment.cpu_info())
    assert out[0].startswith(f"selftest in CPU mode 'reproducible' "
                             f"(SEMIEVOL_CPU_MODE=native for the other) on {here}")
    assert out[1].split()[:3] == ["llama_forward", "a1" * 8, "same"]
    assert out[-1].startswith("this machine reproduces the committed results")


def test_cli_names_the_first_program_that_differs(tmp_path, capsys, fake_programs):
    _write_record(tmp_path, KIND_A, fake_programs)
    _write_record(tmp_path, KIND_B, {**fake_programs, "sample": "ee" * 32})
    assert cli.main(["selftest", "--records", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[:3] == ["sample", "c1" * 8, "DIFFERS"]
    assert out[-1].startswith(f"program 'sample' differs from the digests committed in "
                              f"CPU mode 'reproducible' on {KIND_B}")


def test_cli_json_carries_the_run_and_the_verdict(tmp_path, capsys, fake_programs):
    assert cli.main(["selftest", "--json", "--records", str(tmp_path)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["digests"] == fake_programs and out["mode"] == "reproducible"
    assert out["reproduces"] is False and "no committed digests" in out["verdict"]
    assert set(out["packages"]) == set(selftest.KEY_PACKAGES)


@pytest.mark.slow
def test_this_machine_reproduces_the_committed_selftest(capsys):
    """The real programs (~30 s) against results/repro, in the test process's mode."""
    assert selftest.main(records_dir=selftest.RECORDS) == 0, capsys.readouterr().out
