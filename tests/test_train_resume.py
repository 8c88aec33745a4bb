"""Preemption safety: SIGKILL after a checkpoint + resume == uninterrupted; seeds repeat."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import digit_examples, small_cfg, tiny_model, tokenizer

from semievol_jax import rng, sharding
from semievol_jax.train import train
from semievol_jax.train.loop import param_checksum

TESTS = Path(__file__).parent
N_EXAMPLES = 8 * 6  # 6 steps, checkpoints at 2, 4, 6

# The child trains the same run and SIGKILLs itself right after the step-4 checkpoint is
# on disk (synchronous checkpointing), i.e. a preemption between two checkpoints.
CHILD = r"""
import os, signal, sys
from pathlib import Path
import train_helpers as H
from semievol_jax import rng, sharding
from semievol_jax.train import checkpoint as ckpt, train

real_save = ckpt.save
def save_then_die(manager, step, *a, **k):
    real_save(manager, step, *a, **k)
    manager.wait_until_finished()
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
ckpt.save = save_then_die
train(H.tiny_model("lora", dropout=0.1), H.tokenizer(), H.digit_examples(int(sys.argv[2])),
      H.small_cfg(), Path(sys.argv[1]), mesh=sharding.make_mesh(), key=rng.key_for(0, "train"))
"""


def _lines(work_dir):
    return (work_dir / "metrics.jsonl").read_text().splitlines()


def _run(work_dir):
    model = tiny_model("lora", dropout=0.1)  # dropout on: the RNG stream must resume too
    # Async checkpointing here (sync in the child): saving while the next step donates
    # the state must not corrupt either; the config digest ignores this field.
    cfg = small_cfg(async_checkpoint=True)
    res = train(model, tokenizer(), digit_examples(N_EXAMPLES), cfg, work_dir,
                mesh=sharding.make_mesh(), key=rng.key_for(0, "train"))
    return res, param_checksum(model)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ref"))


def test_same_seed_gives_bit_identical_params(uninterrupted, tmp_path):
    res, params = _run(tmp_path)
    assert res.losses == uninterrupted[0].losses
    np.testing.assert_array_equal(params, uninterrupted[1])
    assert not np.array_equal(params, param_checksum(tiny_model("lora", dropout=0.1)))


def test_sigkill_after_checkpoint_then_resume_is_bit_identical(uninterrupted, tmp_path):
    env = sharding.cpu_devices_env(1)
    env["PYTHONPATH"] = f"{TESTS}:{TESTS.parent}"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(N_EXAMPLES)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    logged = [json.loads(x)["step"] for x in _lines(tmp_path)]
    assert logged == [1, 2, 3, 4]

    res, params = _run(tmp_path)
    assert res.resumed_from == 4 and res.steps == 6 and len(res.losses) == 2
    assert res.losses == uninterrupted[0].losses[4:]
    np.testing.assert_array_equal(params, uninterrupted[1])
    logged = [json.loads(x)["step"] for x in _lines(tmp_path)]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_resumed_at_the_last_step_keeps_the_final_loss(uninterrupted, tmp_path):
    first, checksum = _run(tmp_path)
    again, checksum2 = _run(tmp_path)  # every step is in the checkpoint: no step runs
    assert again.resumed_from == again.total_steps and again.losses == []
    assert again.final_loss == first.final_loss == uninterrupted[0].final_loss
    np.testing.assert_array_equal(checksum2, checksum)
