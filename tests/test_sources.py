"""Stages keyed on the content of what they read from outside the run directory; stale
temporaries of killed runs removed at the next start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from semievol_jax.config import load_config
from semievol_jax.pipeline import sources
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.pipeline.runner import Runner, Stage


def reader(calls: list[str], src: Path) -> list[Stage]:
    def read(ctx):
        calls.append("read")
        text = src.read_text() if src.is_file() else ",".join(
            sorted(p.name for p in src.iterdir()))
        (ctx.out / "copy.txt").write_text(text.upper())

    def after(ctx):
        calls.append("after")
        (ctx.out / "n.txt").write_text(str(len((ctx.inputs["read"] / "copy.txt").read_text())))

    return [Stage("read", read, {}, sources={"src": str(src)}),
            Stage("after", after, {}, reads=("read",))]


def run(tmp: Path, src: Path) -> list[str]:
    calls: list[str] = []
    Runner(tmp / "run", log=lambda *_: None).run(reader(calls, src))
    return calls


def test_an_edited_file_reruns_its_stage_and_what_follows(tmp_path):
    src = tmp_path / "labeled.csv"
    src.write_text("a,b\n")
    assert run(tmp_path, src) == ["read", "after"]
    assert run(tmp_path, src) == []
    rec = json.loads((tmp_path / "run" / "00_read" / "record.json").read_text())
    assert rec["sources"]["src"]["source"] == str(src)
    assert rec["sources"]["src"]["file"]["sha256"] == sources.file_digest(src)
    src.write_text("a,c\n")  # same size, in place
    assert run(tmp_path, src) == ["read", "after"]
    src.write_text("A,C\n")  # new content, same stage output: downstream is reused
    assert run(tmp_path, src) == ["read"]


def test_a_directory_source_reruns_when_a_file_is_added(tmp_path):
    src = tmp_path / "ds"
    src.mkdir()
    (src / "a.arrow").write_text("1")
    assert run(tmp_path, src) == ["read", "after"]
    (src / ".lock").write_text("editor")  # hidden files are not what is read
    assert run(tmp_path, src) == []
    (src / "b.arrow").write_text("2")
    assert run(tmp_path, src) == ["read", "after"]


def test_large_files_are_rehashed_only_when_their_stat_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "ALWAYS_HASH_BYTES", 0)
    hashed = []
    real = sources.file_digest
    monkeypatch.setattr(sources, "file_digest", lambda p: hashed.append(p) or real(p))
    src = tmp_path / "weights.bin"
    src.write_bytes(b"x" * 100)
    run(tmp_path, src)
    assert len(hashed) == 1
    run(tmp_path, src)
    assert len(hashed) == 1  # stat unchanged: the record's digest is reused
    src.write_bytes(b"y" * 101)
    assert run(tmp_path, src) == ["read", "after"] and len(hashed) == 2


def test_names_are_keyed_by_what_pins_them(monkeypatch):
    monkeypatch.setattr(sources, "hub_revision", lambda name, kind: f"{kind}@abc")
    assert sources.digest_source("smollm2-135m-instruct")["pinned"].startswith("b179c952")
    assert sources.digest_source("hf:org/data") == {"hub": "org/data",
                                                    "revision": "dataset@abc"}
    assert sources.digest_source("meta-llama/Llama-3.1-8B") == {
        "hub": "meta-llama/Llama-3.1-8B", "revision": "model@abc"}
    assert sources.digest_source("./no/such/file.csv") == {"missing": "./no/such/file.csv"}


def test_a_hub_revision_offline_is_none(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert sources.hub_revision("org/data", "dataset") is None


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    stale = [run_dir / f".00_read.tmp-{dead.pid}", run_dir / f".01_after.old-{dead.pid}"]
    live = run_dir / ".00_read.tmp-1"  # pid 1 is alive: another run's, left alone
    for d in (*stale, live):
        d.mkdir(parents=True)
    src = tmp_path / "f.txt"
    src.write_text("x")
    assert run(tmp_path, src) == ["read", "after"]
    assert not any(d.exists() for d in stale) and live.exists()


def test_the_data_and_base_stages_rerun_on_an_edited_split_or_checkpoint(
        tmp_path, tiny_ckpt_dir, tiny_task):
    import shutil

    from semievol_jax.pipeline.graph import run_pipeline

    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    shutil.copytree(tiny_task, data)
    shutil.copytree(tiny_ckpt_dir, ckpt)
    cfg = load_config(RunConfig, None, [
        "data.task=mmlu_pro", f"data.labeled={data / 'labeled.csv'}",
        f"data.unlabeled={data / 'unlabeled.csv'}", f"data.test={data / 'test.csv'}",
        f"base.model={ckpt}", "base.dtype=float32"])
    run_dir = tmp_path / "run"

    def times():
        run_pipeline(cfg, run_dir, stop_after="base")
        return [(run_dir / s / "record.json").stat().st_mtime_ns for s in ("00_data", "01_base")]

    first = times()
    assert times() == first
    labeled = data / "labeled.csv"
    labeled.write_text(labeled.read_text().replace(",C,", ",D,", 1))  # an answer, in place
    second = times()
    assert second[0] != first[0] and second[1] != first[1]
    rec = json.loads((run_dir / "00_data" / "record.json").read_text())
    assert set(rec["sources"]) == {"labeled", "unlabeled", "test"}
    (ckpt / "generation_config.json").write_text("{}")
    third = times()
    assert third[0] == second[0] and third[1] != second[1]
