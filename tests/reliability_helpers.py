"""The bad inputs of tests/test_reliability.py: where a case writes (`Env`), the good run
it starts from, and the builders that write one kind of bad file each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from semievol_jax.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "semievol"


@dataclass
class Env:
    """Where a case writes: `tmp`, the good splits in `data/`, a good preset."""

    tmp: Path
    ckpt: Path  # a copy of the tiny checkpoint, the case may break it

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def preset(self) -> Path:
        return self.tmp / "good.yaml"

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def args(self, *overrides: str, command: str = "validate") -> list[str]:
        return [command, "--config", str(self.preset), "--run-dir", str(self.run),
                *overrides]

    def split(self, name: str, text: str | bytes, suffix: str = ".csv",
              command: str = "validate") -> list[str]:
        """Writes split `name` as `text`; the arguments of `command` that read it."""
        path = self.data / f"{name}{suffix}"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return self.args(f"data.{name}={path}", command=command)


def opts(*texts: str) -> str:
    return '"' + json.dumps(list(texts)).replace('"', '""') + '"'


HEADER = "question,options,answer\n"
TSV = 'question\toptions\tanswer\nQ, with a comma?\t["a","b"]\tA\n'


def body(n: int, prefix: str, answer: str = "A", options: str = opts("a", "b")) -> str:
    """`n` CSV rows `<prefix><i>?` with two options and `answer`, no header."""
    return "".join(f"{prefix}{i}?,{options},{answer}\n" for i in range(n))


def rows(n: int, prefix: str, answer: str = "A") -> str:
    """A CSV split file of `n` rows (`body` under the header)."""
    return HEADER + body(n, prefix, answer)


def make_env(tmp: Path, tiny_ckpt_dir: Path) -> Env:
    env = Env(tmp, tmp / "ckpt")
    shutil.copytree(tiny_ckpt_dir, env.ckpt)
    env.data.mkdir()
    for split, prefix in (("labeled", "L"), ("unlabeled", "U"), ("test", "T")):
        (env.data / f"{split}.csv").write_text(rows(10, prefix))
    env.preset.write_text(
        f"name: rel\ndata:\n  task: mmlu_pro\n  labeled: {env.data / 'labeled.csv'}\n"
        f"  unlabeled: {env.data / 'unlabeled.csv'}\n  test: {env.data / 'test.csv'}\n"
        f"base:\n  model: {env.ckpt}\n  dtype: float32\n")
    return env


# ------------------------------------------------------------------ case builders

def over(*overrides: str, command: str = "validate") -> Callable[[Env], list[str]]:
    return lambda env: env.args(*overrides, command=command)


def preset_text(text: str) -> Callable[[Env], list[str]]:
    def build(env):
        path = env.tmp / "bad.yaml"
        path.write_text(text)
        return ["validate", "--config", str(path)]
    return build


def split(name: str, text: str | bytes, suffix: str = ".csv", extra: tuple[str, ...] = (),
          command: str = "validate") -> Callable[[Env], list[str]]:
    return lambda env: env.split(name, text, suffix, command) + list(extra)


def written(path: Path, text: str, *argv: str) -> list[str]:
    """Writes `text` to `path`; `argv`, or `argv path` when it names no path itself."""
    path.write_text(text)
    return [*argv] if len(argv) > 1 else [*argv, str(path)]


def ckpt(breaks: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    def build(env):
        breaks(env.ckpt)
        return env.args()
    return build


def rewrite_st_header(d: Path, edit) -> None:
    f = d / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def set_json(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


def shard_index(d: Path) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    names = json.loads((d / "model-00001-of-00002.safetensors").read_bytes()[
        8:8 + int.from_bytes((d / "model-00001-of-00002.safetensors").read_bytes()[:8],
                             "little")])
    weight_map = {k: "model-00001-of-00002.safetensors" for k in names if k != "__metadata__"}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def finished_run(env: Env) -> Path:
    """A small finished run directory (two toy stages) with its manifest."""
    from semievol_jax.pipeline.runner import Runner, Stage

    def a(ctx):
        (ctx.out / "a.txt").write_text("a")

    def b(ctx):
        (ctx.out / "b.txt").write_text("b")

    env.run.mkdir()
    (env.run / "config.yaml").write_text("name: toy\n")
    Runner(env.run, log=lambda *_: None).run([Stage("a", a, 1), Stage("b", b, 2, reads=("a",))])
    return env.run


def run_dir(edit: Callable[[Path], None], *command: str) -> Callable[[Env], list[str]]:
    def build(env):
        edit(finished_run(env))
        return [*command, str(env.run)]
    return build


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stale_tmp(env: Env) -> list[str]:
    stale = env.run / f".00_data.tmp-{dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "labeled.jsonl").write_text("half")
    return env.args("--until", "data", command="run")


def edited_then_rerun(env: Env) -> list[str]:
    assert main(env.args("--until", "data", command="run")) == 0
    path = env.data / "labeled.csv"
    path.write_text(path.read_text().replace("L3?,", "L3 edited?,"))
    return env.args("--until", "data", command="run")


def datasets_dir(env: Env) -> list[str]:
    datasets = pytest.importorskip("datasets")
    d = env.data / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"question": ["Q?"], "options": [["a", "b"]], "answer": ["A"]})}).save_to_disk(str(d))
    return env.args(f"data.labeled={d}")


def empty_dir_split(env: Env) -> list[str]:
    (env.tmp / "empty").mkdir()
    return env.args(f"data.labeled={env.tmp / 'empty'}")


def official_usmle(env: Env) -> list[str]:
    if not (OFFICIAL / "usmle").is_dir():
        pytest.skip("official usmle data absent")
    return ["validate", "--config", "llama3.1-8b-usmle",
            f"data.labeled={OFFICIAL / 'usmle' / 'labeled.csv'}",
            f"data.test={OFFICIAL / 'usmle' / 'test.csv'}", f"base.model={env.ckpt}"]


def gguf_garbage(env: Env) -> list[str]:
    path = env.tmp / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    return env.args(f"base.model={path}")


def plain_file(env: Env) -> list[str]:
    (env.tmp / "weights.txt").write_text("weights")
    return env.args(f"base.model={env.tmp / 'weights.txt'}")


def run_dir_is_file(env: Env) -> list[str]:
    env.run.write_text("not a directory")
    return env.args()


def run_dir_under_file(env: Env) -> list[str]:
    (env.tmp / "afile").write_text("x")
    return [*env.args(), "--run-dir", str(env.tmp / "afile" / "run")]


def run_dir_unwritable(env: Env) -> list[str]:
    if not Path("/proc").is_dir():
        pytest.skip("no /proc to stand for a read-only place")
    return [*env.args(), "--run-dir", "/proc/semievol-run"]


def convert_onto(kind: str) -> Callable[[Env], list[str]]:
    def build(env):
        target = env.tmp / "out"
        if kind == "file":
            target.write_text("x")
        else:
            target.mkdir()
            (target / "keep.txt").write_text("x")
        return ["convert", "tiny", str(target)]
    return build
