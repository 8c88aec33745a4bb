"""scripts/tree_memory.py counts the memory of a command's worker processes too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import tree_memory  # noqa: E402

# A parent and a child that each hold ~150 MB for a while, then exit with status 3.
HOLD = ("import subprocess, sys, time; b = b'x' * 150_000_000; "
        "c = subprocess.Popen([sys.executable, '-c', "
        "'import time; b = bytes(7) * 21_500_000; time.sleep(1.5)']); "
        "c.wait(); sys.exit(3)")


def test_peak_is_summed_over_the_process_tree(tmp_path):
    out = tmp_path / "mem.json"
    rc = tree_memory.main(["--out", str(out), "--interval", "0.1", "--",
                           sys.executable, "-c", HOLD])
    rec = json.loads(out.read_text())
    assert rc == 3 and rec["exit_status"] == 3  # the command's status is passed on
    assert rec["max_processes"] >= 2
    assert rec["peak_tree_rss_gb"] >= 0.3  # both processes' bytearrays at once
    assert 0 < rec["peak_tree_pss_gb"] <= rec["peak_tree_rss_gb"] + 1e-9
