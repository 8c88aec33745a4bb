"""Launching N local processes joined by jax.distributed (CPU, gloo) for multi-host tests."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from semievol_jax import sharding

TESTS = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(script: str, nproc: int, devices: int, args: list[str]) -> list[subprocess.Popen]:
    """``nproc`` workers of ``python -c script PID NPROC PORT *args``, one coordinator port,
    each process with ``devices`` CPU devices."""
    env = sharding.cpu_devices_env(devices)
    env["PYTHONPATH"] = f"{TESTS}:{TESTS.parent}"
    port = str(free_port())
    return [subprocess.Popen([sys.executable, "-c", script, str(i), str(nproc), port, *args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(nproc)]


def wait(procs: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    """Each worker's stdout; fails with the stderr tail of any worker that failed."""
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return [o for o, _ in outs]
