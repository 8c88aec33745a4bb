"""Sharded training == single-device training (8 simulated CPU devices, one subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semievol_jax import sharding

TESTS = Path(__file__).parent

# Runs in a fresh interpreter with 8 CPU devices, so the rest of the suite keeps one.
SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import jax
import numpy as np
import train_helpers as H
from semievol_jax import rng, sharding
from semievol_jax.train import train
from semievol_jax.train.loop import param_checksum

modes = sys.argv[1].split(",")
all_meshes = {"single": None, "data8": (8, 1, 1), "fsdp8": (1, 8, 1), "fsdp4_tensor2": (1, 4, 2)}
meshes = {k: all_meshes[k] for k in ["single"] + sys.argv[2].split(",")}
assert len(jax.devices()) == 8
ex = H.digit_examples(8 * 20)
out = {}
for mode in modes:
    kind, _, lora_grad = mode.partition("+")  # "lora+direct": train.lora_grad=direct
    for name, shape in meshes.items():
        if shape is None:
            mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
        else:
            mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
        model = H.tiny_model(kind)
        cfg = H.small_cfg(mode=kind, checkpoint_every=100, lora_grad=lora_grad or "autodiff")
        res = train(model, H.tokenizer(), ex, cfg, Path(tempfile.mkdtemp()), mesh=mesh,
                    key=rng.key_for(0, "train"))
        out[f"{mode}/{name}"] = {"losses": res.losses,
                                 "params": param_checksum(model).tolist()}
if sys.argv[3] == "resume":
    # Interrupt a data-parallel run right after its step-4 checkpoint, resume on FSDP x tensor.
    from semievol_jax.train import checkpoint as ckpt
    real_save = ckpt.save
    class Preempted(Exception):
        pass
    def save_then_stop(manager, step, *a, **k):
        real_save(manager, step, *a, **k)
        if step == 4:
            manager.wait_until_finished()
            raise Preempted
    work = Path(tempfile.mkdtemp())
    cfg = H.small_cfg(mode="lora", checkpoint_every=2)
    ckpt.save = save_then_stop
    try:
        train(H.tiny_model("lora"), H.tokenizer(), ex, cfg, work,
              mesh=sharding.make_mesh(sharding.MeshConfig(8, 1, 1)), key=rng.key_for(0, "train"))
    except Preempted:
        pass
    ckpt.save = real_save
    model = H.tiny_model("lora")
    res = train(model, H.tokenizer(), ex, cfg, work,
                mesh=sharding.make_mesh(sharding.MeshConfig(1, 4, 2)), key=rng.key_for(0, "train"))
    out["resumed"] = {"from": res.resumed_from, "losses": res.losses,
                      "params": param_checksum(model).tolist()}
print("RESULT" + json.dumps(out))
"""


def _run(modes: str, meshes: str, resume: bool = False) -> dict:
    env = sharding.cpu_devices_env(8)
    env["PYTHONPATH"] = f"{TESTS}:{TESTS.parent}"
    argv = [sys.executable, "-c", SCRIPT, modes, meshes, "resume" if resume else "-"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def _check(out: dict, mode: str, meshes: tuple[str, ...]) -> None:
    ref = np.asarray(out[f"{mode}/single"]["losses"])
    ref_p = np.asarray(out[f"{mode}/single"]["params"])
    assert len(ref) == 20 and ref[-1] < ref[0]
    for name in meshes:
        got = np.asarray(out[f"{mode}/{name}"]["losses"])
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=f"{mode} loss on {name}")
        p = np.asarray(out[f"{mode}/{name}"]["params"])
        np.testing.assert_allclose(p, ref_p, rtol=1e-4, atol=1e-6, err_msg=f"{mode} params")


def test_sharded_lora_fsdp_x_tensor_matches_single_device_and_resumes_across_meshes():
    """Default suite: the hardest mesh (params split two ways, batch over fsdp), LoRA."""
    out = _run("lora", "fsdp4_tensor2", resume=True)
    _check(out, "lora", ("fsdp4_tensor2",))
    # Checkpointed on a data-parallel mesh, resumed on FSDP x tensor: same run.
    r = out["resumed"]
    assert r["from"] == 4 and len(r["losses"]) == 16
    np.testing.assert_allclose(r["losses"], out["lora/single"]["losses"][4:], rtol=1e-5)
    np.testing.assert_allclose(r["params"], out["lora/single"]["params"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sharded_loss_curve_matches_single_device_lora_and_full():
    """20 steps on data, FSDP and FSDP x tensor meshes, LoRA (both train.lora_grad) and
    full FT (~4 min on 2 cores)."""
    meshes = ("data8", "fsdp8", "fsdp4_tensor2")
    out = _run("lora,lora+direct,full", ",".join(meshes))
    _check(out, "lora", meshes)
    _check(out, "lora+direct", meshes)
    _check(out, "full", meshes)
    np.testing.assert_allclose(out["lora+direct/single"]["losses"], out["lora/single"]["losses"],
                               rtol=1e-4)
