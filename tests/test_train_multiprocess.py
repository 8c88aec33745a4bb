"""Two processes joined by jax.distributed (CPU, gloo) train like one process."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semievol_jax import sharding

TESTS = Path(__file__).parent

WORKER = r"""
import json, sys
from pathlib import Path
from semievol_jax import sharding
pid, port, work = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
cfg = sharding.MeshConfig(data=-1, distributed=True, coordinator=f"localhost:{port}",
                          num_processes=2, process_id=pid)
sharding.initialize_runtime(cfg)  # before anything touches a backend
import jax
import train_helpers as H
from semievol_jax import rng
from semievol_jax.train import train
assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
res = train(H.tiny_model("lora"), H.tokenizer(), H.digit_examples(8 * 4),
            H.small_cfg(checkpoint_every=2), work, mesh=sharding.make_mesh(cfg),
            key=rng.key_for(0, "train"))
print("RESULT" + json.dumps({"pid": pid, "losses": res.losses, "main": sharding.is_main_process()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    from train_helpers import digit_examples, small_cfg, tiny_model, tokenizer

    from semievol_jax import rng
    from semievol_jax.train import train

    env = sharding.cpu_devices_env(2)  # 2 processes x 2 CPU devices = a 4-device mesh
    env["PYTHONPATH"] = f"{TESTS}:{TESTS.parent}"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads([ln for ln in o.splitlines() if ln.startswith("RESULT")][-1][6:])
               for o, _ in outs]
    assert [r["main"] for r in results] == [True, False]
    assert (tmp_path / "checkpoints" / "4").is_dir()  # one shared checkpoint per step
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4  # process 0 only

    ref = train(tiny_model("lora"), tokenizer(), digit_examples(8 * 4), small_cfg(),
                tmp_path / "single", mesh=sharding.make_mesh(), key=rng.key_for(0, "train"))
    for r in results:
        np.testing.assert_allclose(r["losses"], ref.losses, rtol=1e-5)
