"""The provenance record every run writes, and `semievol verify` rerunning from it: the
same command with the same arguments, whatever kind of run made the directory."""

from __future__ import annotations

import json

import pytest

from semievol_jax import commands
from semievol_jax.errors import UserError
from semievol_jax.pipeline import provenance, verify
from semievol_jax.pipeline.provenance import Provenance


def _digests(path, digest):
    path.mkdir(parents=True, exist_ok=True)
    (path / "digests.json").write_text(json.dumps({"seed0": {"base": digest}}))
    return path


def test_the_record_round_trips_and_names_this_cpu(tmp_path):
    prov = provenance.write_provenance(tmp_path / "d", "ablate",
                                       {"config": "demo", "overrides": ["seed=1"]}, workers=2)
    back = provenance.read_provenance(tmp_path / "d")
    assert back == prov and back.kind == "ablate" and back.machine["workers"] == 2
    assert provenance.recorded_cpu(tmp_path / "d") is not None
    with pytest.raises(ValueError, match="kind"):
        Provenance("sweep", {})


def test_a_directory_without_a_record_is_a_run_of_its_config(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    prov = provenance.read_provenance(tmp_path)
    assert prov == Provenance("run", {"config": str(tmp_path / "config.yaml"),
                                      "overrides": []})
    with pytest.raises(UserError, match="cannot tell how it was made"):
        provenance.read_provenance(tmp_path / "empty")


def test_verify_reruns_what_the_record_says(tmp_path):
    made = _digests(tmp_path / "made", "aa" * 32)
    provenance.write_provenance(made, "demo", {"quick": True, "overrides": ["x=1"]})
    seen = []

    def rerun(prov, out):  # a fresh run that reproduces the digests
        seen.append(prov)
        _digests(out, "aa" * 32)

    assert verify.verify(made, rerun=rerun) == 0
    assert seen == [provenance.read_provenance(made)]

    def differ(prov, out):
        _digests(out, "bb" * 32)

    assert verify.verify(made, rerun=differ) == 1
    assert verify.verify(made) == 0  # no rerun, no fresh run: the files only


@pytest.mark.parametrize("kind, args, called", [
    ("demo", {"quick": True, "overrides": ["a=1"]},
     ("demo", {"quick": True, "overrides": ["a=1"]})),
    ("run", {"config": "demo", "overrides": ["b=2"]},
     ("run", {"config": "demo", "overrides": ["b=2"], "ablate": False})),
    ("ablate", {"config": "/x/c.yaml", "overrides": []},
     ("run", {"config": "/x/c.yaml", "overrides": [], "ablate": True})),
])
def test_the_cli_reruns_each_kind_with_its_command(tmp_path, monkeypatch, kind, args, called):
    calls = []
    monkeypatch.setattr(commands, "demo", lambda out, **kw: calls.append(("demo", kw)))
    monkeypatch.setattr(commands, "run", lambda config, overrides, *, run_dir, ablate:
                        calls.append(("run", {"config": config, "overrides": overrides,
                                              "ablate": ablate})))
    commands.rerun(Provenance(kind, args), tmp_path / "fresh")
    assert calls == [called]


def test_a_yaml_config_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "my.yaml").write_text("name: x\n")
    monkeypatch.chdir(tmp_path)
    assert commands._config_arg("my.yaml") == str(tmp_path / "my.yaml")
    assert commands._config_arg("demo") == "demo"
