"""Preflight: settings by the rule table, the checkpoint by a cheap look, the run directory."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from semievol_jax.config import ConfigError, load_config
from semievol_jax.pipeline import checks
from semievol_jax.pipeline.checkpoint_look import look_at_checkpoint
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.pipeline.preflight import check_run, run_dir_problems


def settings(*overrides: str) -> list[str]:
    return checks.check_settings(load_config(RunConfig, "demo", list(overrides)))


@pytest.mark.parametrize(("override", "line"), [
    ("select.theta=2", "select.theta=2.0: must be in [0, 1]"),
    ("sft.train.learning_rate=-1", "sft.train.learning_rate=-1.0: must be greater than 0"),
    ("base.dtype=float8", "base.dtype=float8: must be one of float32 | bfloat16 | float16"),
    ("data.max_rows=-5", "data.max_rows=-5: must be at least 0"),
    ("final.train.learning_rate=nan", "final.train.learning_rate=nan: must be a finite number"),
    ("select.sweep_thetas=[0.1,1.5]",
     "select.sweep_thetas=[0.1, 1.5]: element 1 (1.5) must be in [0, 1]"),
    ("sft.train.micro_batch_size=3",
     "sft.train.batch_size=16 must be a positive multiple of sft.train.micro_batch_size=3"),
    ("mesh.data=0", "mesh.data=0: must be -1 (all devices left) or at least 1"),
    ("name=a/b", "name=a/b: must be a non-empty folder name (no '/'; use --run-dir for a path)"),
])
def test_one_line_naming_the_setting(override, line):
    assert settings(override) == [line]


def test_every_preset_passes_and_every_setting_has_a_rule():
    from semievol_jax.config import preset_names

    for name in preset_names():
        assert checks.check_settings(load_config(RunConfig, name, [])) == [], name
    assert checks.uncovered_settings() == [], (
        "settings without a rule: add a row to checks.RULES (or, for free text, to FREE)")


def test_a_glob_rule_covers_both_training_stages():
    assert checks.rules_for("sft.train.epochs") and checks.rules_for("final.train.epochs")
    assert settings("final.train.epochs=0") == ["final.train.epochs=0: must be at least 1"]


def test_sub_config_checks_name_their_node():
    with pytest.raises(ConfigError, match=r"^sft\.lora: LoRA rank must be >= 1, got 0$"):
        load_config(RunConfig, "demo", ["sft.lora.rank=0"])
    with pytest.raises(ConfigError, match=r"^propose\.sample: SampleConfig\.top_p"):
        load_config(RunConfig, "demo", ["propose.sample.top_p=0"])
    with pytest.raises(ConfigError, match=r"^eval\.sample: SampleConfig\.key_layout must be "
                                          r"one of \('SH', 'HS'\), got 'hs'$"):
        load_config(RunConfig, "demo", ["eval.sample.key_layout=hs"])


@pytest.fixture()
def ckpt(tmp_path, tiny_ckpt_dir) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt_dir, out)
    return out


def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n])


def test_a_good_checkpoint_passes_with_its_config(ckpt):
    look = look_at_checkpoint(str(ckpt))
    assert look.problems == [] and look.cfg.num_layers == 2


def _break_pickle(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")


def _break_truncated(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


def _break_non_llama(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))


def _break_config(ckpt):
    (ckpt / "config.json").write_text("{not json")


def _rewrite_header(ckpt, edit):
    f = ckpt / "model.safetensors"
    n, header = _header(f)
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + f.read_bytes()[8 + n:])


def _break_missing_tensor(ckpt):
    _rewrite_header(ckpt, lambda h: h.pop("model.norm.weight"))


def _break_wrong_shape(ckpt):
    def edit(h):
        h["model.norm.weight"]["shape"] = [32]
    _rewrite_header(ckpt, edit)


def _break_no_tokenizer(ckpt):
    for f in ckpt.glob("tokenizer*"):
        f.unlink()


@pytest.mark.parametrize(("breaks", "says"), [
    (_break_pickle, "only pickle weights (pytorch_model.bin)"),
    (_break_truncated, "model.safetensors: truncated"),
    (_break_non_llama, "model_type 'gpt2' is not supported"),
    (_break_config, "config.json: not valid JSON"),
    (_break_missing_tensor, "tensor(s) missing: model.norm.weight"),
    (_break_wrong_shape, "model.norm.weight (32,) (expected (64,))"),
    (_break_no_tokenizer, "no tokenizer"),
])
def test_a_broken_checkpoint_is_one_problem(ckpt, breaks, says):
    breaks(ckpt)
    look = look_at_checkpoint(str(ckpt))
    assert len(look.problems) == 1 and says in look.problems[0], look.problems
    assert look.problems[0].startswith(f"base.model: {ckpt}")


def test_pickle_weights_allowed_are_a_note(ckpt):
    _break_pickle(ckpt)
    look = look_at_checkpoint(str(ckpt), allow_pickle=True)
    assert look.problems == [] and "pickle weights" in look.notes[0]


def test_gguf_checked_by_its_header(tmp_path):
    from gguf_helpers import write_tiny_gguf

    path, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert look_at_checkpoint(str(path)).problems == []
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-4096])
    (problem,) = look_at_checkpoint(str(cut)).problems
    assert "truncated" in problem or "not a readable GGUF" in problem


def test_names_that_are_fetched_later_are_notes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    look = look_at_checkpoint("smollm2-135m-instruct")
    assert look.problems == [] and "not fetched yet" in look.notes[0]
    look = look_at_checkpoint("meta-llama/Llama-3.1-8B-Instruct")
    assert look.problems == [] and "hub id" in look.notes[0]
    (tmp_path / "weights.txt").write_text("x")
    assert "not a .gguf checkpoint" in look_at_checkpoint(str(tmp_path / "weights.txt")
                                                          ).problems[0]
    assert "no such directory" in look_at_checkpoint("no/such/dir").problems[0]


def test_run_directory_problems(tmp_path):
    (tmp_path / "file").write_text("x")
    assert run_dir_problems(tmp_path / "new" / "run") == []
    assert "exists and is not a directory" in run_dir_problems(tmp_path / "file")[0]
    assert "is a file, not a directory" in run_dir_problems(tmp_path / "file" / "run")[0]
    if Path("/proc").is_dir():  # writable by nobody, root included
        assert "cannot write in /proc" in run_dir_problems(Path("/proc/semievol-run"))[0]


def test_check_run_finds_every_problem_at_once(tmp_path):
    cfg = load_config(RunConfig, "llama3.1-8b-usmle", [
        "select.theta=2", f"base.model={tmp_path / 'nope'}", "index.layer=-3",
        f"data.test={tmp_path / 'test.parquet'}", f"data.labeled={tmp_path / 'labeled.csv'}"])
    (tmp_path / "test.parquet").write_bytes(b"PAR1")
    # a good labeled split wherever the official release is (or is not) checked out
    (tmp_path / "labeled.csv").write_text('question,options,answer\nQ?,"[""a"", ""b""]",A\n')
    found = check_run(cfg, tmp_path / "run")
    assert [p.split(":")[0].split("=")[0] for p in found.problems] == [
        "index.layer", "select.theta", "data.unlabeled", "data.test", "base.model"]
