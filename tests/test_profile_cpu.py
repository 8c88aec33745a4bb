"""scripts/profile_cpu.py: XLA op events joined with the optimized HLO, grouped by kind."""
# ruff: noqa: E501  (the HLO below is XLA's dump format, one instruction per line)

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import profile_cpu  # noqa: E402

# A hand-written optimized module in XLA:CPU's dump format: a projection matmul (its
# einsum in the fusion's metadata), an attention matmul whose metadata XLA dropped, a
# scanned layer's slice, a transpose for a matmul, an elementwise fusion, a while loop.
HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_computation.1 (param_0: f32[64,576], param_1: f32[1536,576]) -> f32[64,1536] {
  %param_0 = f32[64,576]{1,0} parameter(0)
  %param_1 = f32[1536,576]{1,0} parameter(1)
  ROOT %dot.1 = f32[64,1536]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={1}, metadata={op_name="jit(step)/while/body/...I,OI->...O/dot_general"}
}

%fused_computation.2 (param_0.2: f32[3,64,3072], param_1.2: f32[3,3072,1024]) -> f32[3,64,1024] {
  %param_0.2 = f32[3,64,3072]{2,1,0} parameter(0)
  %param_1.2 = f32[3,3072,1024]{2,1,0} parameter(1)
  ROOT %dot.2 = f32[3,64,1024]{2,1,0} dot(%param_0.2, %param_1.2), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%fused_computation.3 (param_0.3: f32[30,1536,576], param_1.3: s32[]) -> f32[1536,576] {
  %param_0.3 = f32[30,1536,576]{2,1,0} parameter(0)
  %param_1.3 = s32[] parameter(1)
  %constant.3 = s32[] constant(0)
  %dynamic-slice.3 = f32[1,1536,576]{2,1,0} dynamic-slice(%param_0.3, %param_1.3, %constant.3, %constant.3), dynamic_slice_sizes={1,1536,576}
  ROOT %bitcast.3 = f32[1536,576]{1,0} bitcast(%dynamic-slice.3)
}

ENTRY %main.9 (p0: f32[64,576], p1: f32[30,1536,576]) -> f32[] {
  %p0 = f32[64,576]{1,0} parameter(0)
  %p1 = f32[30,1536,576]{2,1,0} parameter(1)
  %i = s32[] constant(3)
  %dynamic-slice_bitcast_fusion.3 = f32[1536,576]{1,0} fusion(%p1, %i), kind=kLoop, calls=%fused_computation.3
  %ynn_fusion.1 = f32[64,1536]{1,0} fusion(%p0, %dynamic-slice_bitcast_fusion.3), kind=kCustom, calls=%fused_computation.1
  %copy_bitcast_fusion.4 = f32[3,64,3072]{2,1,0} copy(%p0)
  %ynn_fusion.2 = f32[3,64,1024]{2,1,0} fusion(%copy_bitcast_fusion.4, %copy_bitcast_fusion.4), kind=kCustom, calls=%fused_computation.2
  %while.5 = (s32[], f32[64,576]{1,0}) while(%p0), condition=%c, body=%b
  ROOT %add_multiply_fusion = f32[] fusion(%p0), kind=kLoop, calls=%fused_computation.1
}
"""


def test_parse_hlo_puts_each_op_in_its_kind():
    instrs = profile_cpu.parse_hlo(HLO)
    kinds = {name: profile_cpu.kind_of(name, instrs.get(name)) for name in (
        "ynn_fusion.1", "ynn_fusion.2", "dynamic-slice_bitcast_fusion.3",
        "copy_bitcast_fusion.4")}
    assert kinds == {"ynn_fusion.1": "projections", "ynn_fusion.2": "attention",
                     "dynamic-slice_bitcast_fusion.3": "layer_slices",
                     "copy_bitcast_fusion.4": "transposes"}
    assert instrs["ynn_fusion.1"]["spec"] == "...I,OI->...O"
    assert instrs["while.5"]["opcode"] == "while"  # a tuple shape still parses
    assert profile_cpu.kind_of("fusion.9", None) == "elementwise"


def test_a_fusion_that_only_slices_is_a_layer_slice():
    """An unrolled stack slices each layer's weights at a static index; a fusion that
    slices and computes is not a copy."""
    comps = """
%fused_computation.6 (param_0.6: f32[30,1536,576]) -> f32[1536,576] {
  %param_0.6 = f32[30,1536,576]{2,1,0} parameter(0)
  %slice.6 = f32[1,1536,576]{2,1,0} slice(%param_0.6), slice={[4:5], [0:1536], [0:576]}
  ROOT %bitcast.6 = f32[1536,576]{1,0} bitcast(%slice.6)
}

%fused_computation.7 (param_0.7: f32[30,1536,576]) -> f32[1536,576] {
  %param_0.7 = f32[30,1536,576]{2,1,0} parameter(0)
  %slice.7 = f32[1,1536,576]{2,1,0} slice(%param_0.7), slice={[4:5], [0:1536], [0:576]}
  %bitcast.7 = f32[1536,576]{1,0} bitcast(%slice.7)
  ROOT %multiply.7 = f32[1536,576]{1,0} multiply(%bitcast.7, %bitcast.7)
}

ENTRY"""
    ops = ("  %slice_bitcast_fusion.6 = f32[1536,576]{1,0} fusion(%p1), kind=kLoop, "
           "calls=%fused_computation.6\n  %multiply_fusion.7 = f32[1536,576]{1,0} "
           "fusion(%p1), kind=kLoop, calls=%fused_computation.7\n")
    hlo = HLO.replace("\nENTRY", comps, 1).replace("  %i = s32[]", ops + "  %i = s32[]")
    instrs = profile_cpu.parse_hlo(hlo)
    assert profile_cpu.kind_of("slice_bitcast_fusion.6",
                               instrs["slice_bitcast_fusion.6"]) == "layer_slices"
    assert profile_cpu.kind_of("multiply_fusion.7", instrs["multiply_fusion.7"]) == "elementwise"


def _event(op: str, ns: int) -> dict:
    """One profiler event of an op of the test module."""
    return {"module": "jit_step", "program": 7, "op": op, "start_ns": 0, "ns": ns}


def test_summarize_counts_ops_not_the_loops_around_them():
    modules = {("jit_step", 7): profile_cpu.parse_hlo(HLO)}
    events = [_event("ynn_fusion.1", 3_000_000_000), _event("ynn_fusion.2", 1_000_000_000),
              _event("while.5", 9_000_000_000)]
    r = profile_cpu.summarize(events, modules, wall_s=4.0, cpu_s=6.0)
    assert r["op_s"] == 4.0 and r["cores_busy"] == 1.5 and r["events_unmatched"] == 0
    assert r["kinds"]["projections"] == {"s": 3.0, "share": 0.75, "events": 1}
    assert r["kinds"]["attention"]["share"] == 0.25
    assert r["top_ops"][0]["op"] == "jit_step:ynn_fusion.1"


def test_summarize_groups_ops_of_one_shape():
    """An unrolled stack names each layer's op apart; grouped by kind and shape, the
    per-layer copies add up."""
    extra = ("  %ynn_fusion.7 = f32[64,1536]{1,0} fusion(%p0, %dynamic-slice_bitcast_fusion.3), "
             "kind=kCustom, calls=%fused_computation.1\n")
    hlo = HLO.replace("  %copy_bitcast_fusion.4", extra + "  %copy_bitcast_fusion.4")
    modules = {("jit_step", 7): profile_cpu.parse_hlo(hlo)}
    events = [_event("ynn_fusion.1", 1_000_000_000), _event("ynn_fusion.7", 1_500_000_000),
              _event("ynn_fusion.2", 2_000_000_000)]
    r = profile_cpu.summarize(events, modules, wall_s=4.0, cpu_s=6.0)
    assert r["top_ops"][0]["op"] == "jit_step:ynn_fusion.2"
    first = r["top_shapes"][0]
    assert first["what"].startswith("jit_step:projections f32[64,1536]")
    assert (first["s"], first["calls"], first["ops"]) == (2.5, 2, 2)


def test_decode_program_takes_the_matmul_dtype(tmp_path, monkeypatch):
    """--matmul-dtype reaches the decode's model and its key, as it does the train step's."""
    import semievol_jax.model as model_pkg

    seen = []
    real = model_pkg.set_matmul_dtype
    monkeypatch.setattr(model_pkg, "set_matmul_dtype",
                        lambda m, dtype: (seen.append(dtype), real(m, dtype))[1])
    key, _ = profile_cpu.decode_program(True, tmp_path, "HS", matmul_dtype="bfloat16")
    assert seen == ["bfloat16"] and key.endswith("/key_layout=HS/matmul=bfloat16 "
                                                 "(random (2-layer toy shape))")
    key, _ = profile_cpu.decode_program(True, tmp_path / "f32", "HS")
    assert seen == ["bfloat16", None] and "matmul" not in key


@pytest.mark.slow
def test_profile_script_tiny(tmp_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_cpu.py"), "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    train = next(v for k, v in runs.items() if k.startswith("train/"))
    decode = next(v for k, v in runs.items() if k.startswith("decode/"))
    for r in (train, decode):
        assert r["events"] > 0 and r["events_unmatched"] == 0  # every op found in its HLO
        assert abs(sum(k["share"] for k in r["kinds"].values()) - 1) < 0.01
        assert r["first_call_s"] > 0
        # Each op is in one group: the groups sum to no more than the op time.
        assert 0 < sum(x["s"] for x in r["top_shapes"]) <= r["op_s"] + 0.002
    assert train["kinds"]["lora"]["events"] > 0 and train["kinds"]["attention"]["events"] > 0
    assert decode["kinds"]["layer_slices"]["events"] > 0  # the scanned KV cache and weights
    assert "jit__loop_jit" in decode["modules_s"]
    # A second command adds its run and leaves the first one's, each with its command.
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_cpu.py"), "--tiny",
                           "--programs", "train", "--train-shape", "2x64", "--remat", "none",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert "--remat none" in runs["train/tiny/lora/2x64/remat=none"]["command"]
    assert "--remat" not in runs[next(k for k in runs if k.startswith("decode/"))]["command"]
