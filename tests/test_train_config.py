"""TrainConfig validation and the learning-rate schedule."""

import math

import pytest

from semievol_jax.train import TrainConfig, TrainConfigError
from semievol_jax.train.optim import make_schedule, warmup_steps


def test_defaults_are_the_official_semievol_sft():
    c = TrainConfig()
    assert (c.mode, c.learning_rate, c.epochs, c.schedule, c.warmup_ratio) == \
        ("lora", 1e-4, 2, "cosine", 0.1)
    assert (c.batch_size, c.cutoff_len, c.compute_dtype) == (8, 1024, "bfloat16")
    assert c.validate() is c


@pytest.mark.parametrize("lr", [0.0, -1e-4, float("nan"), float("inf")])
def test_bad_learning_rate_is_a_clear_error(lr):
    with pytest.raises(TrainConfigError, match="train.learning_rate must be a finite number > 0"):
        TrainConfig(learning_rate=lr).validate()


@pytest.mark.parametrize("field,value,msg", [
    ("batch_size", 8, "micro_batch_size=3"), ("mode", "qlora", "train.mode"),
    ("schedule", "step", "train.schedule"), ("warmup_ratio", 1.0, "warmup_ratio"),
])
def test_other_bad_fields(field, value, msg):
    kw = {field: value}
    if field == "batch_size":
        kw["micro_batch_size"] = 3
    with pytest.raises(TrainConfigError, match=msg):
        TrainConfig(**kw).validate()


def test_cosine_schedule_warms_up_then_decays_to_zero():
    c = TrainConfig(learning_rate=1e-4)
    total = 100
    assert warmup_steps(c, total) == 10
    s = make_schedule(c, total)
    assert float(s(0)) == 0.0
    assert math.isclose(float(s(5)), 5e-5, rel_tol=1e-5)
    assert math.isclose(float(s(10)), 1e-4, rel_tol=1e-5)
    assert math.isclose(float(s(55)), 5e-5, rel_tol=1e-4)  # half-way through the cosine
    assert float(s(100)) < 1e-9
    lin = make_schedule(TrainConfig(schedule="linear", warmup_ratio=0.0), 10)
    assert math.isclose(float(lin(5)), 5e-5, rel_tol=1e-5)
