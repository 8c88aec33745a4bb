"""SemiEvol rounds > 1: layout, the digest chain across rounds, skip / rerun / resume.

The stage functions are replaced by fakes that write one JSON file naming their config
and the digests of what they read, so these tests exercise the orchestration (graph.py,
runner.py) in well under a second per run; tests/test_pipeline_rounds_e2e.py runs the
real stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semievol_jax.config import load_config
from semievol_jax.files import file_digest
from semievol_jax.pipeline import graph, runner, summary, verify
from semievol_jax.pipeline import stages as st
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.pipeline.runner import read_record, run_manifests, status

ROUND1 = ["00_data", "01_base", "02_sft", "03_index", "04_propose", "05_select", "06_final",
          "07_eval"]
LATER = ROUND1[1:]  # later rounds adopt round 1's data


class Fakes:
    """Stand-ins for every stage function; `fail` names a stage to raise in once."""

    def __init__(self):
        self.fail: str | None = None
        self.calls: list[str] = []

    def make(self, name: str):
        def fake(ctx, **kw):
            where = ctx.out.parent.name
            self.calls.append(f"{where}/{name}")
            if self.fail == f"{where}/{name}":
                self.fail = None
                raise RuntimeError(f"injected failure in {name}")
            seen = {r: file_digest(d / "out.json") for r, d in sorted(ctx.inputs.items())}
            (ctx.out / "out.json").write_text(json.dumps(
                {"stage": name, "inputs": seen, "config": repr(ctx.config),
                 "seed": kw.get("seed")}, sort_keys=True))
            if name != "eval":
                return {}
            r = int(where.removeprefix("round")) if where.startswith("round") else 1
            return {"acc_vanilla": 0.25, "acc_sft": 0.25 + 0.1 * r,
                    "acc_semievol": 0.3 + 0.1 * r}
        return fake


@pytest.fixture
def fakes(monkeypatch) -> Fakes:
    f = Fakes()
    for name in ("data", "base", "round_base", "sft", "index", "propose", "select", "final",
                 "eval"):
        monkeypatch.setattr(st, f"run_{name}", f.make(name.removeprefix("round_")))
    # The fakes leave nothing to free, and the full garbage collection the runner does
    # after each stage takes a third of a second in a long pytest session.
    monkeypatch.setattr(runner, "release_free_memory", lambda **_: None)
    return f


def run(tmp_path: Path, *overrides: str) -> dict:
    cfg = load_config(RunConfig, None, ["data.task=mmlu_pro", *overrides])
    return graph.run_pipeline(cfg, tmp_path / "run", mesh="no-mesh")


def mtimes(run_dir: Path) -> dict[str, int]:
    return {f"{d.parent.name}/{d.name}": (d / "record.json").stat().st_mtime_ns
            for d in sorted(run_dir.rglob("[0-9][0-9]_*")) if (d / "record.json").exists()}


def digest(rec: dict) -> str:
    return rec["output_digest"]


def test_layout_and_digest_chain(tmp_path, fakes):
    records = run(tmp_path, "rounds=3")
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir() if p.name[:2].isdigit()) == ROUND1
    for r in (2, 3):
        assert sorted(p.name for p in (out / f"round{r}").iterdir()
                      if p.name[:2].isdigit()) == LATER
    assert set(records) == {s[3:] for s in ROUND1} | {
        f"round{r}/{s[3:]}" for r in (2, 3) for s in LATER}
    # Round r+1's base reads round r's base, M1 and M2: a change anywhere there reruns it.
    for r, prev in ((2, ""), (3, "round2/")):
        base = records[f"round{r}/base"]
        assert base["input_digests"] == {
            f"prev_{s}": digest(records[prev + s]) for s in ("base", "sft", "final")}
        assert records[f"round{r}/sft"]["input_digests"]["base"] == digest(base)
        # Data is round 1's; vanilla stays the original base in every round.
        ev = records[f"round{r}/eval"]["input_digests"]
        assert ev["data"] == digest(records["data"])
        assert ev["vanilla"] == digest(records["base"])
    # Each round samples with its own seed; round 1 keeps the run's seed.
    seeds = {r: json.loads((graph.round_dir(out, r) / "04_propose" / "out.json").read_text())
             ["seed"] for r in (1, 2, 3)}
    assert seeds[1] == 0 and len(set(seeds.values())) == 3

    manifests = run_manifests(out)
    assert [m.parent.name for m in manifests] == ["run", "round2", "round3"]
    r2 = json.loads((out / "round2" / "manifest.json").read_text())
    assert r2["data"]["dir"] == "../00_data" and r2["prev_final"]["dir"] == "../06_final"
    rows = [r["stage"] for r in status(out)]
    assert rows == ROUND1 + [f"round{r}/{s}" for r in (2, 3) for s in LATER]
    assert verify.verify(out) == 0


def test_one_round_is_unchanged_and_extends(tmp_path, fakes):
    """rounds=2 runs round 1 exactly as rounds=1 does: raising `rounds` reuses it."""
    one = run(tmp_path)
    assert not list((tmp_path / "run").glob("round*"))
    before = mtimes(tmp_path / "run")
    two = run(tmp_path, "rounds=2")
    assert {k: digest(v) for k, v in two.items() if "/" not in k} == \
        {k: digest(v) for k, v in one.items()}
    after = mtimes(tmp_path / "run")
    assert {k: after[k] for k in before} == before  # round 1 skipped, round 2 new
    assert sorted(k for k in after if k not in before) == [f"round2/{s}" for s in LATER]


def test_rerun_skips_and_round1_change_reruns_round2(tmp_path, fakes):
    run(tmp_path, "rounds=2")
    before = mtimes(tmp_path / "run")
    fakes.calls.clear()
    run(tmp_path, "rounds=2")
    assert fakes.calls == [] and mtimes(tmp_path / "run") == before
    # base_seed is read by round 1's base only: round 2 reruns through the digest chain.
    run(tmp_path, "rounds=2", "base_seed=7")
    assert fakes.calls == [f"run/{s[3:]}" for s in ROUND1[1:]] + \
        [f"round2/{s[3:]}" for s in LATER]
    # A knob of a late stage reruns round 1 from that stage, then all of round 2.
    fakes.calls.clear()
    run(tmp_path, "rounds=2", "base_seed=7", "final.train.epochs=3")
    assert fakes.calls == ["run/final", "run/eval"] + [f"round2/{s[3:]}" for s in LATER]


def test_failure_in_round2_resumes_there(tmp_path, fakes):
    fakes.fail = "round2/propose"
    with pytest.raises(RuntimeError, match="injected failure"):
        run(tmp_path, "rounds=2")
    assert not (tmp_path / "run" / "round2" / "04_propose").exists()
    assert not list((tmp_path / "run" / "round2").glob(".04_propose*"))
    done = mtimes(tmp_path / "run")
    fakes.calls.clear()
    records = run(tmp_path, "rounds=2")
    assert fakes.calls == ["round2/propose", "round2/select", "round2/final", "round2/eval"]
    assert {k: v for k, v in mtimes(tmp_path / "run").items() if k in done} == done
    assert read_record(tmp_path / "run" / "round2" / "07_eval")["key"] == \
        records["round2/eval"]["key"]


def test_headline_and_per_round_accuracy(tmp_path, fakes):
    records = run(tmp_path, "rounds=3")
    head = graph.headline_metrics(records)
    # Baselines from round 1, SemiEvol after the last round.
    assert head["acc_sft"] == pytest.approx(0.35)
    assert head["acc_semievol"] == pytest.approx(0.6)
    per = summary.accuracy_per_round({0: {"semievol": records}, 1: {"semievol": records}})
    assert per == {"vanilla": pytest.approx([0.25] * 3),
                   "sft": pytest.approx([0.35, 0.45, 0.55]),
                   "semievol": pytest.approx([0.4, 0.5, 0.6])}
    one = summary.summarise({0: {"semievol": records}})
    assert one["semievol"]["per_seed"] == [pytest.approx(0.6)]
    assert one["semievol"]["std"] is None  # one seed: no spread
    two = summary.summarise({0: {"semievol": records}, 1: {"semievol": records}})
    assert two["semievol"]["std"] == 0.0  # the sample std (ddof=1) of equal values
    assert "| semievol | 0.250 | 0.350 | 0.600 |" in summary.accuracy_table({"semievol": records})


def test_round_seed_and_bad_rounds():
    assert graph.round_seed(5, 1) == 5
    assert len({graph.round_seed(5, r) for r in (1, 2, 3)} | {graph.round_seed(6, 2)}) == 4
    cfg = load_config(RunConfig, None, ["data.task=mmlu_pro", "rounds=0"])
    from semievol_jax.errors import UserError

    with pytest.raises(UserError, match="rounds must be at least 1"):
        graph.build_stages(cfg, None)


def test_config_yaml_is_written_by_the_main_process_only(tmp_path, fakes, monkeypatch):
    from semievol_jax import sharding
    from semievol_jax.config import to_yaml

    run(tmp_path, "rounds=2")
    out = tmp_path / "run"
    cfg = load_config(RunConfig, None, ["data.task=mmlu_pro", "rounds=2"])
    assert (out / "config.yaml").read_text() == to_yaml(cfg)
    assert [p.name for p in out.glob(".config.yaml*")] == []  # via a renamed temp file
    # Another process of a multi-host run leaves the main process's file alone.
    (out / "config.yaml").write_text("main's\n")
    monkeypatch.setattr(sharding, "is_main_process", lambda: False)
    monkeypatch.setattr(graph.Runner, "run", lambda self, stages: {s.name: {} for s in stages})
    monkeypatch.setattr(graph.Runner, "adopt", lambda self, name, d: None)
    run(tmp_path, "rounds=1")
    assert (out / "config.yaml").read_text() == "main's\n"
