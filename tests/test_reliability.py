"""Every bad input of docs/reliability.md, written here and given to the CLI.

Each case builds its files under a fresh directory (reliability_helpers.py), runs
`semievol ...` in this process, and checks the exit code, that the output holds the
message the table quotes, and that no traceback was printed. The settings section of the
table drives its own cases: each row's bad input is one override, its message the line
the tool must print. The rest of the table and `CASES` list the same cases with the same
messages and exit codes (`test_the_docs_table_is_this_table`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from reliability_helpers import (
    DOC,
    TSV,
    Env,
    body,
    ckpt,
    convert_onto,
    datasets_dir,
    edited_then_rerun,
    empty_dir_split,
    gguf_garbage,
    make_env,
    official_usmle,
    opts,
    over,
    plain_file,
    preset_text,
    rewrite_st_header,
    rows,
    run_dir,
    run_dir_is_file,
    run_dir_under_file,
    run_dir_unwritable,
    set_json,
    shard_index,
    split,
    stale_tmp,
    written,
)

from semievol_jax.cli import main

SETTINGS_SECTION = "### Ranges, choices, dtypes, row limits"

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
    # settings that need more than an override (the others: SETTINGS_SECTION)
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
    Case("official-usmle-no-unlabeled", official_usmle,
         "holds no unlabeled file (the official usmle and mmlu_pro releases ship none)"),
    # the base checkpoint
    Case("base-model-not-set", over("base.model=''"), "base.model: not set"),
    Case("base-model-missing", over("base.model=/no/such/ckpt"),
         "no such directory or .gguf file"),
    Case("base-pickle-only", ckpt(lambda d: (d / "model.safetensors").rename(
        d / "pytorch_model.bin")), "only pickle weights (pytorch_model.bin)"),
    Case("base-truncated", ckpt(lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-1000])), "model.safetensors: truncated"),
    Case("base-not-llama", ckpt(lambda d: set_json(d, model_type="gpt2")),
         "model_type 'gpt2' is not supported"),
    Case("base-config-not-json", ckpt(lambda d: (d / "config.json").write_text("{oops")),
         "config.json: not valid JSON"),
    Case("base-config-missing", ckpt(lambda d: (d / "config.json").unlink()),
         "config.json not found"),
    Case("base-tensor-missing", ckpt(lambda d: rewrite_st_header(
        d, lambda h: h.pop("model.norm.weight"))), "tensor(s) missing: model.norm.weight"),
    Case("base-tensor-wrong-shape", ckpt(lambda d: rewrite_st_header(
        d, lambda h: h["model.norm.weight"].update(shape=[32]))),
        "of the wrong shape for its config.json: model.norm.weight (32,) (expected (64,))"),
    Case("base-shard-missing", ckpt(shard_index),
         "shard model-00002-of-00002.safetensors is missing"),
    Case("base-no-tokenizer", ckpt(lambda d: [f.unlink() for f in d.glob("tokenizer*")]),
         "no tokenizer (tokenizer.json / tokenizer.model / vocab.json)"),
    Case("base-plain-file", plain_file, "a file, but not a .gguf checkpoint"),
    Case("base-gguf-garbage", gguf_garbage, "not a readable GGUF file"),
    # the run directory
    Case("run-dir-is-a-file", run_dir_is_file, "exists and is not a directory"),
    Case("run-dir-under-a-file", run_dir_under_file, "afile is a file, not a directory"),
    Case("run-dir-not-writable", run_dir_unwritable, "cannot write in /proc"),
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
    Case("datasets-dir-without-the-split", datasets_dir, "no split 'labeled'; it has ['train']"),
    Case("directory-not-a-dataset", lambda env: empty_dir_split(env),
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
    Case("edited-split-reruns-data", edited_then_rerun, "[data] running", rc=0),
    Case("stale-stage-temporary", stale_tmp, "left by a killed run", rc=0),
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
    Case("convert-tiny-onto-a-directory", convert_onto("dir"),
         "already exists and is not an empty directory"),
    Case("convert-tiny-onto-a-file", convert_onto("file"),
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
    env = make_env(tmp_path, tiny_ckpt_dir)
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
    env = make_env(tmp_path, tiny_ckpt_dir)
    argv = env.split("labeled", rows(1, "L") + body(1, "L"), command="run")
    assert main([*argv, "--until", "data"]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "duplicate of line 2" in ln)
    assert line.startswith("[data] ") and line.endswith("labeled.csv:3: duplicate of line 2")
    assert "warn" not in err and ".py" not in err


def test_validate_writes_nothing(tmp_path, tiny_ckpt_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env(tmp_path, tiny_ckpt_dir)
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

    env = make_env(tmp_path, tiny_ckpt_dir)
    (env.ckpt / "model.safetensors").rename(env.ckpt / "pytorch_model.bin")
    cfg = load_config(RunConfig, str(env.preset))
    with pytest.raises(UserError, match="only pickle weights"):
        run_pipeline(cfg, env.run, stop_after="base")
    assert not (env.run / "01_base").exists() and (env.run / "00_data").is_dir()


def doc_rows() -> dict[str, tuple[str, str, str, int]]:
    """Case id -> (section, bad input, message, exit code) of docs/reliability.md."""
    out, section = {}, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("### "):
            section = line
        m = re.match(r"^\|\s*\d+\s*\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*(\d)\s*\|\s*$", line)
        if m:
            what, says = (c.strip() for c in re.split(r"(?<!\\)\|", m.group(2)))
            out[m.group(1)] = (section, what, says.strip("`").strip().replace("\\|", "|"),
                               int(m.group(3)))
    return out


def setting_rows() -> list[tuple[str, str, str, int]]:
    """(id, override, message, exit code) of the settings rows no `Case` builds."""
    built = {c.id for c in CASES}
    return [(cid, re.search(r"`([^`]+)`", what).group(1), says, rc)
            for cid, (section, what, says, rc) in doc_rows().items()
            if section == SETTINGS_SECTION and cid not in built]


@pytest.mark.parametrize(("cid", "override", "says", "rc"), setting_rows(),
                         ids=[r[0] for r in setting_rows()])
def test_a_bad_setting_is_the_line_the_table_quotes(cid, override, says, rc, tmp_path,
                                                      tiny_ckpt_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env(tmp_path, tiny_ckpt_dir)
    assert main(env.args(override)) == rc
    err = capsys.readouterr().err
    assert says in err.splitlines() and "Traceback" not in err, err


def test_the_docs_table_is_this_table():
    doc = doc_rows()
    settings = setting_rows()
    assert sorted(doc) == sorted([c.id for c in CASES] + [r[0] for r in settings])
    for c in CASES:
        _, _, says, rc = doc[c.id]
        assert c.says in says, f"docs/reliability.md row {c.id} does not quote {c.says!r}"
        assert rc == c.rc, f"row {c.id}: exit code {c.rc}"
    assert all(re.fullmatch(r"[\w.]+=\S*", override) for _, override, _, _ in settings)
    assert len(settings) >= 30 and len(doc) >= 66
