"""scripts/bench_compile.py builds the programs a run compiles, at a toy shape here (no
timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_decode_compiles_the_prefill_and_the_loop_scanned_and_unrolled(tmp_path):
    out = tmp_path / "compile.json"
    for label, flags in (("scan", []), ("unrolled", ["--unroll-layers"])):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_compile.py"),
                               "--shapes", "tiny", "--programs", "decode", "--label", label,
                               "--out", str(out), *flags], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {label: doc[label]["rows"][0] for label in ("scan", "unrolled")}
    for label, row in rows.items():
        assert row["program"] == "decode" and row["unroll_layers"] == (label == "unrolled")
        for k in ("lower_s", "compile_s", "hlo_lines"):
            assert row[k] == pytest.approx(row["prefill"][k] + row["loop"][k], abs=2e-3)
        assert row["loop"]["compile_s"] > 0
    # The prefill is the same program either way; the unrolled loop holds a copy of the
    # block per layer.
    assert rows["unrolled"]["prefill"]["hlo_lines"] == rows["scan"]["prefill"]["hlo_lines"]
    assert rows["unrolled"]["loop"]["hlo_lines"] > rows["scan"]["loop"]["hlo_lines"]
