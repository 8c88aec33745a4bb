"""`semievol study`: the jobs a preset's study runs, and its --variant rows."""

import pytest

from semievol_jax.config import load_config
from semievol_jax.errors import UserError
from semievol_jax.pipeline.config import RunConfig
from semievol_jax.study import ablation_variants, parse_variants, study_jobs


def test_parse_variants():
    assert parse_variants(["lr:final.train.learning_rate=1e-6,select.theta=0.5"]) == {
        "lr": ["final.train.learning_rate=1e-6", "select.theta=0.5"]}
    for bad in ("noname", ":a=1", "x:a", "x:"):
        with pytest.raises(UserError, match="--variant"):
            parse_variants([bad])


def test_study_runs_ablations_for_the_asked_seeds_only(tmp_path):
    cfg = load_config(RunConfig, "smollm2-fpb", [])
    variants = {0: ablation_variants(cfg)}
    jobs = study_jobs(cfg, tmp_path, (0, 1, 2),
                      lambda c: variants[0] if c.seed == 0 else {})
    names = [j.name for j in jobs]
    assert names[:4] == ["seed0/base", "seed0/semievol", "seed1/semievol", "seed2/semievol"]
    assert sorted(n for n in names if "no_" in n) == [
        "seed0/no_as", "seed0/no_cl", "seed0/no_icp", "seed0/no_iwp"]
    by = {j.name: j for j in jobs}
    # the "without IWP" row trains from the base at the SFT stage's settings
    iwp = by["seed0/no_iwp"].cfg
    assert not iwp.sft.enabled and not iwp.final.from_sft
    assert iwp.final.train == cfg.sft.train
