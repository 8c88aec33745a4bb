"""Every bad input of docs/reliability.md, written here and given to the CLI.

Each case builds its files under a fresh directory, runs `semievol ...` in this process,
and checks the exit code, that the output holds the message the table quotes, and that
no traceback was printed. The table in docs/reliability.md and `CASES` must list the
same cases with the same messages (`test_the_docs_table_is_this_table`).
"""

from __future__ import annotations

import json
import re
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


def _make_env(tmp: Path, tiny_ckpt_dir: Path) -> Env:
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


def _rewrite_st_header(d: Path, edit) -> None:
    f = d / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def _set_json(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


def _shard_index(d: Path) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    names = json.loads((d / "model-00001-of-00002.safetensors").read_bytes()[
        8:8 + int.from_bytes((d / "model-00001-of-00002.safetensors").read_bytes()[:8],
                             "little")])
    weight_map = {k: "model-00001-of-00002.safetensors" for k in names if k != "__metadata__"}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _finished_run(env: Env) -> Path:
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
        edit(_finished_run(env))
        return [*command, str(env.run)]
    return build


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_tmp(env: Env) -> list[str]:
    stale = env.run / f".00_data.tmp-{_dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "labeled.jsonl").write_text("half")
    return env.args("--until", "data", command="run")


def _edited_then_rerun(env: Env) -> list[str]:
    assert main(env.args("--until", "data", command="run")) == 0
    path = env.data / "labeled.csv"
    path.write_text(path.read_text().replace("L3?,", "L3 edited?,"))
    return env.args("--until", "data", command="run")


def _datasets_dir(env: Env) -> list[str]:
    datasets = pytest.importorskip("datasets")
    d = env.data / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"question": ["Q?"], "options": [["a", "b"]], "answer": ["A"]})}).save_to_disk(str(d))
    return env.args(f"data.labeled={d}")


def _empty_dir_split(env: Env) -> list[str]:
    (env.tmp / "empty").mkdir()
    return env.args(f"data.labeled={env.tmp / 'empty'}")


def _official_usmle(env: Env) -> list[str]:
    if not (OFFICIAL / "usmle").is_dir():
        pytest.skip("official usmle data absent")
    return ["validate", "--config", "llama3.1-8b-usmle",
            f"data.labeled={OFFICIAL / 'usmle' / 'labeled.csv'}",
            f"data.test={OFFICIAL / 'usmle' / 'test.csv'}", f"base.model={env.ckpt}"]


def _gguf_garbage(env: Env) -> list[str]:
    path = env.tmp / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    return env.args(f"base.model={path}")


def _plain_file(env: Env) -> list[str]:
    (env.tmp / "weights.txt").write_text("weights")
    return env.args(f"base.model={env.tmp / 'weights.txt'}")


def _run_dir_is_file(env: Env) -> list[str]:
    env.run.write_text("not a directory")
    return env.args()


def _run_dir_under_file(env: Env) -> list[str]:
    (env.tmp / "afile").write_text("x")
    return [*env.args(), "--run-dir", str(env.tmp / "afile" / "run")]


def _run_dir_unwritable(env: Env) -> list[str]:
    if not Path("/proc").is_dir():
        pytest.skip("no /proc to stand for a read-only place")
    return [*env.args(), "--run-dir", "/proc/semievol-run"]


def _convert_onto(kind: str) -> Callable[[Env], list[str]]:
    def build(env):
        target = env.tmp / "out"
        if kind == "file":
            target.write_text("x")
        else:
            target.mkdir()
            (target / "keep.txt").write_text("x")
        return ["convert", "tiny", str(target)]
    return build


# ------------------------------------------------------------------ the table

@dataclass(frozen=True)
class Case:
    id: str  # the first column of docs/reliability.md
    build: Callable[[Env], list[str]]  # writes the bad input; returns the CLI arguments
    says: str  # a part of what the CLI prints (stdout + stderr), as the doc quotes it
    rc: int = 2


CASES = [
    # presets and overrides
    Case("preset-unknown", lambda env: ["validate", "--config", "no-such-preset"],
         "unknown preset 'no-such-preset'"),
    Case("preset-file-missing", lambda env: ["validate", "--config", str(env.tmp / "no.yaml")],
         "no.yaml: no such config file"),
    Case("yaml-malformed", preset_text("name: x\n  data: [\n"), "not valid YAML"),
    Case("yaml-not-a-mapping", preset_text("- a\n- b\n"), "must be a YAML mapping, got list"),
    Case("yaml-unknown-key", preset_text("nmae: x\n"), "Key 'nmae' not in 'RunConfig'"),
    Case("yaml-wrong-type", preset_text("rounds: many\n"), "could not be converted to Integer"),
    Case("override-without-equals", over("select.theta"), "overrides must look like key.sub=value"),
    Case("override-unknown-key", over("select.thetta=0.3"), "Key 'thetta' not in 'SelectConfig'"),
    Case("override-wrong-type", over("propose.n=four"), "could not be converted to Integer "
                                                         "(key: propose.n)"),
    # ranges, choices, dtypes, row limits
    Case("theta-above-1", over("select.theta=2"), "select.theta=2.0: must be in [0, 1]"),
    Case("theta-negative", over("select.theta=-0.1"), "select.theta=-0.1: must be in [0, 1]"),
    Case("select-rule-unknown", over("select.rule=best"),
         "select.rule=best: must be one of official | all | none"),
    Case("sweep-theta-above-1", over("select.sweep_thetas=[0.3,1.5]"),
         "select.sweep_thetas=[0.3, 1.5]: element 1 (1.5) must be in [0, 1]"),
    Case("lr-negative", over("sft.train.learning_rate=-1"),
         "sft.train.learning_rate=-1.0: must be greater than 0"),
    Case("lr-nan", over("final.train.learning_rate=nan"),
         "final.train.learning_rate=nan: must be a finite number"),
    Case("epochs-zero", over("sft.train.epochs=0"), "sft.train.epochs=0: must be at least 1"),
    Case("batch-zero", over("final.train.batch_size=0"),
         "final.train.batch_size=0: must be at least 1"),
    Case("micro-batch-not-dividing", over("sft.train.micro_batch_size=3"),
         "sft.train.batch_size=8 must be a positive multiple of sft.train.micro_batch_size=3"),
    Case("warmup-ratio-above-1", over("sft.train.warmup_ratio=1.5"),
         "sft.train.warmup_ratio=1.5: must be in [0, 1)"),
    Case("train-mode-unknown", over("sft.train.mode=half"),
         "sft.train.mode=half: must be one of lora | full"),
    Case("schedule-unknown", over("sft.train.schedule=step"),
         "sft.train.schedule=step: must be one of cosine | linear | constant"),
    Case("compute-dtype-float8", over("sft.train.compute_dtype=float8"),
         "sft.train.compute_dtype=float8: must be one of null | float32 | bfloat16 | float16"),
    Case("cutoff-too-short", over("sft.train.cutoff_len=1"),
         "sft.train.cutoff_len=1: must be at least 2"),
    Case("lora-rank-zero", over("sft.lora.rank=0"), "sft.lora: LoRA rank must be >= 1, got 0"),
    Case("lora-target-unknown", over("sft.lora.targets=[qkv]"),
         "sft.lora: unknown LoRA targets ['qkv']"),
    Case("lora-dropout-above-1", over("sft.lora.dropout=1.5"),
         "sft.lora.dropout=1.5: must be in [0, 1)"),
    Case("base-dtype-float8", over("base.dtype=float8"),
         "base.dtype=float8: must be one of float32 | bfloat16 | float16"),
    Case("max-rows-negative", over("data.max_rows=-5"), "data.max_rows=-5: must be at least 0"),
    Case("eval-max-rows-negative", over("eval.max_rows=-1"),
         "eval.max_rows=-1: must be at least 0"),
    Case("collaborators-zero", over("propose.n=0"), "propose.n=0: must be at least 1"),
    Case("temperature-negative", over("propose.sample.temperature=-1"),
         "propose.sample: SampleConfig.temperature must be >= 0"),
    Case("top-p-zero", over("propose.sample.top_p=0"),
         "propose.sample: SampleConfig.top_p must be in (0, 1]"),
    Case("max-new-tokens-zero", over("eval.sample.max_new_tokens=0"),
         "eval.sample.max_new_tokens=0: must be at least 1"),
    Case("truncate-mode-unknown", over("propose.sample.truncate=right"),
         "propose.sample: SampleConfig.truncate must be 'error' or 'left'"),
    Case("index-k-negative", over("index.k=-1"), "index.k=-1: must be at least 0"),
    Case("index-pooling-unknown", over("index.pooling=max"),
         "index.pooling=max: must be one of mean | last"),
    Case("index-layer-past-the-model", over("index.layer=5"),
         "index.layer=5: must be in [-1, 2) for this 2-layer base"),
    Case("index-backend-unknown", over("index.index.backend=faiss"),
         "index.index: IndexConfig.backend='faiss'"),
    Case("rounds-zero", over("rounds=0"), "rounds=0: must be at least 1"),
    Case("ablation-unknown", over("ablation=no_xyz"),
         "ablation=no_xyz: must be one of '' | no_iwp | no_icp | no_cl | no_as"),
    Case("seed-negative", over("seed=-1"), "seed=-1: must be at least 0"),
    Case("mesh-axis-zero", over("mesh.tensor=0"), "mesh.tensor=0: must be at least 1"),
    Case("run-name-a-path", over("name=a/b"), "name=a/b: must be a non-empty folder name"),
    Case("pretrain-width-odd-heads", lambda env: [
        "validate", "--config", "demo", "--run-dir", str(env.run),
        "base.pretrain.hidden_size=100"],
        "base.pretrain.hidden_size=100: hidden_size / num_heads must be even"),
    Case("ablate-checks-too", over("select.theta=2", command="ablate"),
         "select.theta=2.0: must be in [0, 1]"),
    Case("until-unknown-stage", over("--until", "bogus", command="run"),
         "--until bogus: not a stage"),
    # task and split sources
    Case("task-unknown", over("data.task=mmlu_prox"), "data.task=mmlu_prox: unknown task"),
    Case("split-not-set", over("data.unlabeled=''"), "data.unlabeled: not set"),
    Case("override-empty-value", over("data.unlabeled="), "write key='' for an empty text"),
    Case("split-file-missing", lambda env: env.args(f"data.test={env.tmp / 'nope.csv'}"),
         "nope.csv: no such file or directory"),
    Case("split-unknown-format", split("test", "PAR1", ".parquet"), "unknown format '.parquet'"),
    Case("official-usmle-no-unlabeled", _official_usmle,
         "holds no unlabeled file (the official usmle and mmlu_pro releases ship none)"),
    # the base checkpoint
    Case("base-model-not-set", over("base.model=''"), "base.model: not set"),
    Case("base-model-missing", over("base.model=/no/such/ckpt"),
         "no such directory or .gguf file"),
    Case("base-pickle-only", ckpt(lambda d: (d / "model.safetensors").rename(
        d / "pytorch_model.bin")), "only pickle weights (pytorch_model.bin)"),
    Case("base-truncated", ckpt(lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-1000])), "model.safetensors: truncated"),
    Case("base-not-llama", ckpt(lambda d: _set_json(d, model_type="gpt2")),
         "model_type 'gpt2' is not supported"),
    Case("base-config-not-json", ckpt(lambda d: (d / "config.json").write_text("{oops")),
         "config.json: not valid JSON"),
    Case("base-config-missing", ckpt(lambda d: (d / "config.json").unlink()),
         "config.json not found"),
    Case("base-tensor-missing", ckpt(lambda d: _rewrite_st_header(
        d, lambda h: h.pop("model.norm.weight"))), "tensor(s) missing: model.norm.weight"),
    Case("base-tensor-wrong-shape", ckpt(lambda d: _rewrite_st_header(
        d, lambda h: h["model.norm.weight"].update(shape=[32]))),
        "of the wrong shape for its config.json: model.norm.weight (32,) (expected (64,))"),
    Case("base-shard-missing", ckpt(_shard_index),
         "shard model-00002-of-00002.safetensors is missing"),
    Case("base-no-tokenizer", ckpt(lambda d: [f.unlink() for f in d.glob("tokenizer*")]),
         "no tokenizer (tokenizer.json / tokenizer.model / vocab.json)"),
    Case("base-plain-file", _plain_file, "a file, but not a .gguf checkpoint"),
    Case("base-gguf-garbage", _gguf_garbage, "not a readable GGUF file"),
    # the run directory
    Case("run-dir-is-a-file", _run_dir_is_file, "exists and is not a directory"),
    Case("run-dir-under-a-file", _run_dir_under_file, "afile is a file, not a directory"),
    Case("run-dir-not-writable", _run_dir_unwritable, "cannot write in /proc"),
    # split files
    Case("column-missing", split("labeled", "question,answer\nQ?,A\n"),
         "missing required column(s) ['options']; found ['question', 'answer']"),
    Case("options-not-json", split("labeled", "question,options,answer\nQ?,[a b,A\n"),
         "options is not valid JSON"),
    Case("options-a-dict", split("labeled", 'question,options,answer\nQ?,"{""a"": 1}",A\n'),
         "options must be a list of strings, got dict"),
    Case("options-empty-list", split("labeled", "question,options,answer\nQ?,[],A\n"),
         "options is an empty list"),
    Case("option-not-text", split("labeled", 'question,options,answer\nQ?,"[""a"", 3]",A\n'),
         "option B is int 3, expected a string"),
    Case("option-count-of-task", split("labeled", rows(2, "M"), extra=("data.task=mmlu",)),
         "2 options; task 'mmlu' has 4"),
    Case("answer-letter-past-options", split("labeled", rows(1, "L", answer="C")),
         "answer 'C' is not a valid letter for 2 options (A-B)"),
    Case("answer-empty", split("test", rows(1, "T", answer="")), "answer is empty"),
    Case("answer-column-of-texts", split("labeled", rows(10, "L", answer="positive")),
         "10 of 10 rows fail the same way"),
    Case("answers-numbers-and-letters", split("labeled", rows(9, "L") + body(1, "M", "1")),
         "answer '1' is not a letter for 2 options"),
    Case("answer-index-past-options", split("labeled", rows(9, "L", "0") + body(1, "M", "2")),
         "answer 2 is not a 0-based index for 2 options (0-1)"),
    Case("file-empty", split("labeled", ""), "file is empty (expected a header line)"),
    Case("header-only", split("labeled", "question,options,answer\n"), "no data rows"),
    Case("latin-1-bytes", split("labeled", "question,options,answer\nCaf\xe9?,".encode("latin-1")
                                + opts("a", "b").encode() + b",A\n"),
         "not valid UTF-8 (byte 0xE9"),
    Case("utf-16-file", split("labeled", rows(2, "L").encode("utf-16")),
         "the file is UTF-16"),
    Case("tab-separated-named-csv", split("labeled", TSV),
         "the header is one column holding tabs"),
    Case("semicolon-separated", split("labeled", 'question;options;answer\nQ?;["a","b"];A\n'),
         "the header is one column holding semicolons"),
    Case("extra-field", split("labeled", rows(2, "L") + "M?," + opts("a", "b") + ",A,x\n"),
         "4 fields, the header has 3"),
    Case("quote-opened-in-question", split("labeled", 'question,options,answer\n"Q1 open,'
                                           + opts("a", "b") + ",A\n"),
         "nor a Python list: \"\"b\"\"]\" (a quote left open in an earlier field?)"),
    Case("question-empty", split("labeled", 'question,options,answer\n"",' + opts("a", "b")
                                 + ",A\n"), "question is empty"),
    Case("question-a-megabyte", split("labeled", "question,options,answer\n" + "x" * 1_000_000
                                      + "," + opts("a", "b") + ",A\n"),
         "question is 1,000,000 characters (limit 100,000)"),
    Case("repeat-with-other-answer", split("labeled", rows(1, "L") + body(1, "L", "B")),
         "repeats the question and options of line 2 with a different answer (B vs A)"),
    Case("jsonl-bad-line", split("labeled", '{"question": "Q?", "options": ["a"] "answer": "A"}\n',
                                 ".jsonl"), "invalid JSON: Expecting ',' delimiter"),
    Case("jsonl-not-an-object", split("labeled", '["Q?", ["a"], "A"]\n', ".jsonl"),
         "expected a JSON object, got list"),
    Case("json-array-of-numbers", split("labeled", "[1, 2]", ".json"),
         "expected a JSON object, got int"),
    Case("datasets-dir-without-the-split", _datasets_dir, "no split 'labeled'; it has ['train']"),
    Case("directory-not-a-dataset", lambda env: _empty_dir_split(env),
         "cannot load as a datasets dataset"),
    Case("leakage-labeled-is-test", split("labeled", rows(10, "T")),
         "leakage: 10 of 10 test rows (100.0%) also in another split"),
    Case("leakage-refused-by-run", split("labeled", rows(10, "T"), extra=("--until", "data"),
                                         command="run"),
         "more than data.max_leakage=0.05 of the test split"),
    Case("strict-refuses-repeats", split("labeled", rows(1, "L") + body(1, "L"),
                                         extra=("--strict",)),
         "duplicate of line 2 (--strict)"),
    Case("strict-run-refuses-repeats", split("labeled", rows(1, "L") + body(1, "L"),
                                             extra=("--strict", "--until", "data"),
                                             command="run"),
         "duplicate of line 2 (--strict)"),
    Case("strict-refuses-unusable-gold", split("unlabeled", rows(1, "U", answer="Z"),
                                               extra=("--strict",)),
         "unlabeled.csv:2: answer 'Z' is not a valid letter for 2 options (A-B)"),
    # formats users hold, and oddities kept with a note: accepted, with what was read
    Case("tsv-file", split("labeled", TSV, ".tsv"), "ok: a run with these settings would start",
         rc=0),
    Case("options-python-literal", split("labeled", "question,options,answer\n" + "".join(
        f"L{i}?,\"['a', 'b']\",A\n" for i in range(3))),
        "options written as a Python list (what pandas writes); read as that list (3 rows "
        "like this)", rc=0),
    Case("answers-0-based", split("labeled", rows(5, "L", answer="0") + body(1, "M", "1")),
         "read as 0-based (a 0 appears)", rc=0),
    Case("answers-1-based", split("labeled", rows(5, "L", answer="1") + body(1, "M", "2")),
         "read as 1-based (no 0 appears)", rc=0),
    Case("excel-bom-crlf", split("labeled", b"\xef\xbb\xbf" + rows(3, "L").replace(
        "\n", "\r\n").encode()), "ok: a run with these settings would start", rc=0),
    Case("option-nan", split("labeled", 'question,options,answer\nQ?,"[""a"", NaN]",B\n'),
         "option B is NaN; read as the text 'None'", rc=0),
    Case("repeated-row", split("labeled", rows(1, "L") + body(1, "L")),
         "duplicate of line 2", rc=0),
    Case("repeated-row-note-in-a-run", split("labeled", rows(1, "L") + body(1, "L"),
                                             extra=("--until", "data"), command="run"),
         "labeled.csv:3: duplicate of line 2", rc=0),
    Case("unusable-unlabeled-gold", split("unlabeled", rows(1, "U", answer="Z")),
         "the row is still pseudo-labelled and left out of pseudo-label scoring", rc=0),
    Case("edited-split-reruns-data", _edited_then_rerun, "[data] running", rc=0),
    Case("stale-stage-temporary", _stale_tmp, "left by a killed run", rc=0),
    # status, verify, convert, fetch
    Case("status-missing-path", lambda env: ["status", str(env.tmp / "nope")],
         "nope: no such run directory"),
    Case("status-on-a-file", lambda env: written(env.tmp / "f", "x", "status"),
         "not a directory"),
    Case("status-empty-directory", lambda env: ["status", str(env.tmp)],
         "no stages found", rc=1),
    Case("verify-missing-path", lambda env: ["verify", str(env.tmp / "nope")],
         "nope: no such run directory"),
    Case("verify-digests-corrupt", lambda env: written(env.tmp / "digests.json", "{", "verify",
                                                       "--no-rerun", str(env.tmp)),
         "digests.json: unreadable digest table"),
    Case("verify-digests-not-a-table", lambda env: written(
        env.tmp / "digests.json", "[1]", "verify", "--no-rerun", str(env.tmp)),
        "not a digest table"),
    Case("verify-manifest-corrupt", run_dir(lambda d: (d / "manifest.json").write_text("{x"),
                                            "verify", "--no-rerun"),
         "manifest.json: unreadable manifest"),
    Case("verify-manifest-changed", run_dir(lambda d: (d / "manifest.json").write_text(
        (d / "manifest.json").read_text().replace('"output_digest": "', '"output_digest": "0')),
        "verify", "--no-rerun"),
        "the manifest's digest differs from the stage's record (the files match the record",
        rc=1),
    Case("verify-files-changed", run_dir(lambda d: (d / "01_b" / "b.txt").write_text("B"),
                                         "verify", "--no-rerun"),
         "b: files differ from record", rc=1),
    Case("verify-record-corrupt", run_dir(lambda d: (d / "01_b" / "record.json").write_text("{"),
                                          "verify", "--no-rerun"),
         "b: no readable record", rc=1),
    Case("verify-provenance-corrupt", run_dir(lambda d: (d / "provenance.json").write_text("{"),
                                              "verify"), "unreadable provenance record"),
    Case("convert-tiny-onto-a-directory", _convert_onto("dir"),
         "already exists and is not an empty directory"),
    Case("convert-tiny-onto-a-file", _convert_onto("file"),
         "already exists and is not an empty directory"),
    Case("convert-merge-no-adapter", lambda env: [
        "convert", "merge", "--base", str(env.ckpt), "--adapter", str(env.tmp / "nope"),
        "--out", str(env.tmp / "merged")], "nope: no such adapter directory"),
    Case("convert-gguf-missing", lambda env: [
        "convert", "gguf", str(env.tmp / "nope.gguf"), str(env.tmp / "out")],
        "nope.gguf: no such GGUF file"),
    Case("fetch-unknown-model", lambda env: ["fetch", "no-such-model"],
         "unknown model 'no-such-model'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_message(case, tmp_path, tiny_ckpt_dir, capsys, monkeypatch):
    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    env = _make_env(tmp_path, tiny_ckpt_dir)
    argv = case.build(env)
    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and 'File "' not in text, text[-3000:]
    assert case.says in text, text[-3000:]
    assert rc == case.rc, text[-3000:]
    if case.rc == 2:  # a refusal names what is wrong on stderr, and writes no stage
        assert "error" in out.err
        made = [p.name for p in env.run.glob("[0-9][0-9]_*")] if env.run.is_dir() else []
        assert made == [] or case.id.startswith("verify"), made


def test_the_duplicate_note_prints_no_source_line(tmp_path, tiny_ckpt_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = _make_env(tmp_path, tiny_ckpt_dir)
    argv = env.split("labeled", rows(1, "L") + body(1, "L"), command="run")
    assert main([*argv, "--until", "data"]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "duplicate of line 2" in ln)
    assert line.startswith("[data] ") and line.endswith("labeled.csv:3: duplicate of line 2")
    assert "warn" not in err and ".py" not in err


def test_validate_writes_nothing(tmp_path, tiny_ckpt_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = _make_env(tmp_path, tiny_ckpt_dir)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(env.args()) == 0
    out = capsys.readouterr().out
    assert "labeled         10 rows" in out and "ok: a run with these settings" in out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_broken_base_is_refused_before_its_stage_is_recorded(tmp_path, tiny_ckpt_dir):
    """Library callers skip preflight; the base stage itself looks before it is done."""
    from semievol_jax.config import load_config
    from semievol_jax.errors import UserError
    from semievol_jax.pipeline.config import RunConfig
    from semievol_jax.pipeline.graph import run_pipeline

    env = _make_env(tmp_path, tiny_ckpt_dir)
    (env.ckpt / "model.safetensors").rename(env.ckpt / "pytorch_model.bin")
    cfg = load_config(RunConfig, str(env.preset))
    with pytest.raises(UserError, match="only pickle weights"):
        run_pipeline(cfg, env.run, stop_after="base")
    assert not (env.run / "01_base").exists() and (env.run / "00_data").is_dir()


def _doc_rows() -> dict[str, str]:
    rows_ = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*\d+\s*\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows_[m.group(1)] = m.group(2).replace("\\|", "|")
    return rows_


def test_the_docs_table_is_this_table():
    doc = _doc_rows()
    assert sorted(doc) == sorted(c.id for c in CASES)
    for c in CASES:
        assert c.says in doc[c.id], f"docs/reliability.md row {c.id} does not quote {c.says!r}"
        assert doc[c.id].rstrip().endswith(f"| {c.rc}"), f"row {c.id}: exit code {c.rc}"
    assert len(CASES) >= 66
