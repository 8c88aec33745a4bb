"""The whole tiny pipeline across two processes gives the one-process run's digests, and
only process 0 writes the run directory."""

from __future__ import annotations

import json

import pytest
from multihost_helpers import launch, wait

# argv: process id, process count, port, checkpoint dir, task dir, run dir.
WORKER = r"""
import json, sys
from pathlib import Path
from semievol_jax.config import load_config
from semievol_jax.pipeline.graph import run_pipeline
from semievol_jax.pipeline.config import RunConfig
from test_pipeline_e2e import tiny_overrides
pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ckpt, data, run = (Path(a) for a in sys.argv[4:7])
over = tiny_overrides(ckpt, data)
if nproc > 1:
    over += ["mesh.distributed=true", f"mesh.coordinator=localhost:{port}",
             f"mesh.num_processes={nproc}", f"mesh.process_id={pid}"]
records = run_pipeline(load_config(RunConfig, None, over), run)
print("RESULT" + json.dumps({k: v["output_digest"] for k, v in records.items()}))
"""


def digests(stdout: str) -> dict[str, str]:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT")][-1][6:])


@pytest.mark.slow
def test_two_process_pipeline_matches_one_process(tmp_path, tiny_ckpt_dir, tiny_task):
    one, two = tmp_path / "one", tmp_path / "two"
    # 2 processes x 1 CPU device against 1 process x 2 devices (the same mesh), at once.
    procs = (launch(WORKER, 2, 1, [str(tiny_ckpt_dir), str(tiny_task), str(two)])
             + launch(WORKER, 1, 2, [str(tiny_ckpt_dir), str(tiny_task), str(one)]))
    out = wait(procs)
    ref = digests(out[2])
    assert len(ref) == 8
    assert digests(out[0]) == digests(out[1]) == ref  # both processes chain process 0's records
    manifest = json.loads((two / "manifest.json").read_text())
    assert {k: v["output_digest"] for k, v in manifest.items()} == ref
    # Nothing but process 0's stage dirs: no other process's temporary dirs, no .work left.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert not any((two / ".work").iterdir())
    assert (two / "07_eval" / "eval.json").read_bytes() == (one / "07_eval" / "eval.json"
                                                            ).read_bytes()
