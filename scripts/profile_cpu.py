"""Where a program's time goes on this CPU: XLA's per-op events, grouped by kind.

Profiles two programs on the SmolLM2-135M shape (``--tiny``: a 2-layer toy, for the test):
  train   one LoRA train step at the SmolLM2 preset's training shape: one packed row of
          1,024 tokens, remat "attention" (random weights, scripts/bench_train.py's step;
          ``--train-shape 8x128 --remat none``: the benchmark's shape);
  decode  generate(): 16 prompts x 4 samples x 64 new tokens, temperature 1
          (scripts/bench_generate.py's prompts and checkpoint: the fetched SmolLM2 when
          it is cached, else random weights of its shape).
Each is run once to compile, then once under ``jax.profiler``. XLA:CPU records one event
per executed op with its module and name; each is joined with that module's optimized
HLO (XLA's own dump) and put in one kind:
  projections   the frozen weights' matmuls (einsum "...I,OI->...O", forward and backward)
  lora          the adapters' rank-R matmuls
  attention     scores and weighted values (einsums over the B K G T/S H axes)
  lm_head       the tied embedding's logits matmul
  other_dots    any other matmul
  layer_slices  copies of one layer's slice out of a stacked [L, ...] buffer (the
                scanned weights, the KV cache; at a static index with
                ``--unroll-layers``) that a matmul cannot read in place
  transposes    other copies: an operand laid out again for a matmul
  elementwise   fused elementwise ops and reductions (norms, softmax, SiLU, RoPE, Adam)
Per kind: the summed duration of its events and its share; per op, and per kind and
shape (an unrolled stack names each layer's op apart): the largest. A matmul's event lasts its
wall time on the thread that runs it (its work on the other worker is not a separate
event), so the shares are of op time, not of core time. ``cores_busy`` is the process's
CPU seconds over the wall seconds of the profiled call: 2.0 on two cores kept busy.
``first_call_s`` is the compiling call before it.
Writes results/bench/profile.json (key per program and shape).

Usage:
  python scripts/profile_cpu.py            # both programs, SmolLM2's shape
  python scripts/profile_cpu.py --tiny --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = ("projections", "lora", "attention", "lm_head", "other_dots", "layer_slices",
         "transposes", "elementwise")
CONTROL = {"while", "conditional", "call"}  # events that span other ops' events
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\(")
_SPEC = re.compile(r"/([^/\"]*->[^/\"]*)/dot_general")


def parse_hlo(text: str) -> dict[str, dict]:
    """Instruction name -> its opcode, shape, the computation it calls and the einsum
    spec of its first matmul (its own, or one inside the computation it calls)."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace() and "{" in line:
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            comps[current] = []
        elif current is not None and line.strip().startswith(("%", "ROOT")):
            comps[current].append(line)
    instrs: dict[str, dict] = {}
    for lines in comps.values():
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            calls = re.search(r"calls=%([\w.\-]+)", line)
            spec = _SPEC.search(line) if m.group(3) in ("dot", "fusion") else None
            instrs[m.group(1)] = {"shape": m.group(2), "opcode": m.group(3),
                                  "calls": calls.group(1) if calls else None,
                                  "spec": spec.group(1) if spec else None,
                                  "is_dot": m.group(3) == "dot",
                                  "batched": m.group(3) == "dot" and _batched(line)}
    for ins in instrs.values():
        body = comps.get(ins["calls"] or "", [])
        inner = [line for line in body if " dot(" in line]
        if inner:
            ins["is_dot"] = True
            ins["batched"] = any(map(_batched, inner))
            if ins["spec"] is None:  # XLA keeps the einsum's name on some line of the fusion
                ins["spec"] = next((s.group(1) for s in map(_SPEC.search, body) if s), None)
        # A dynamic slice (a scanned layer's), or a fusion that only slices (a layer's
        # weights or cache out of a stack, at a static index in an unrolled one).
        body_ops = {m.group(3) for m in map(_INSTR.match, body) if m}
        ins["slices"] = ("dynamic-slice" in body_ops or ins["opcode"] == "dynamic-slice"
                         or ("slice" in body_ops and body_ops <= {"parameter", "slice",
                                                                  "bitcast"}))
    return instrs


def _batched(dot_line: str) -> bool:
    """A matmul with batch dimensions: the model's projections are 2-D matmuls, only
    attention batches (over B K, and G)."""
    return "lhs_batch_dims=" in dot_line and "lhs_batch_dims={}" not in dot_line


def kind_of(name: str, ins: dict | None) -> str:
    if ins is None:
        return "elementwise"
    spec = ins["spec"] or ""
    if ins["is_dot"]:
        if "BKGT" in spec or "BKGS" in spec or (not spec and ins["batched"]):
            return "attention"
        if "VD->" in spec:
            return "lm_head"
        if "R,OR->" in spec or "RI->" in spec:
            return "lora"
        if "OI->" in spec:
            return "projections"
        return "other_dots"
    if ins["slices"] and "copy" not in name:
        return "layer_slices"
    if "copy" in name or "transpose" in name:
        return "transposes"
    return "elementwise"


def load_modules(dump_dir: str) -> dict[tuple[str, int], dict[str, dict]]:
    """(module name, program id) -> parsed optimized HLO, from XLA's dump."""
    out = {}
    for path in glob.glob(os.path.join(dump_dir, "module_*.cpu_after_optimizations.txt")):
        m = re.match(r"module_(\d+)\.(.+)\.cpu_after_optimizations\.txt$", os.path.basename(path))
        if m:
            out[(m.group(2), int(m.group(1)))] = parse_hlo(Path(path).read_text())
    return out


def op_events(trace_dir: str) -> list[dict]:
    """Every XLA op event of the trace: module, program id, op name, start, duration."""
    from jax.profiler import ProfileData

    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    events = []
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if "hlo_op" in stats and "hlo_module" in stats:
                    events.append({"module": stats["hlo_module"],
                                   "program": int(stats.get("program_id", -1)),
                                   "op": stats["hlo_op"], "start_ns": ev.start_ns,
                                   "ns": ev.duration_ns})
    return events


def summarize(events: list[dict], modules: dict, wall_s: float, cpu_s: float,
              top: int = 12) -> dict:
    """Op time per kind and per module, and the ops that take the most."""
    by_name = {}
    for (name, _), instrs in sorted(modules.items(), key=lambda kv: kv[0][1]):
        by_name[name] = instrs  # the last compiled module of a name, where ids differ
    kinds: collections.Counter = collections.Counter()
    kind_events: collections.Counter = collections.Counter()
    per_module: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    shapes: dict[str, str] = {}
    # Ops of one shape and kind together: an unrolled stack has one op name per layer.
    by_shape: collections.Counter = collections.Counter()
    shape_calls: collections.Counter = collections.Counter()
    shape_ops: dict[str, set] = collections.defaultdict(set)
    unmatched = 0
    for ev in events:
        instrs = modules.get((ev["module"], ev["program"])) or by_name.get(ev["module"])
        ins = instrs.get(ev["op"]) if instrs else None
        if ins is not None and ins["opcode"] in CONTROL:
            continue
        unmatched += ins is None
        kind = kind_of(ev["op"], ins)
        kinds[kind] += ev["ns"]
        kind_events[kind] += 1
        per_module[ev["module"]] += ev["ns"]
        key = f"{ev['module']}:{ev['op']}"
        ops[key] += ev["ns"]
        calls[key] += 1
        shapes[key] = f"{kind} {ins['shape'] if ins else '?'} {(ins or {}).get('spec') or ''}"
        what = f"{ev['module']}:{shapes[key]}"
        by_shape[what] += ev["ns"]
        shape_calls[what] += 1
        shape_ops[what].add(ev["op"])
    total = sum(kinds.values()) or 1
    # Op times to the microsecond: a toy shape's ops take well under a millisecond.
    return {
        "wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3),
        "cores_busy": round(cpu_s / wall_s, 2) if wall_s else None,
        "op_s": round(total / 1e9, 6), "events": len(events), "events_unmatched": unmatched,
        "kinds": {k: {"s": round(kinds[k] / 1e9, 6), "share": round(kinds[k] / total, 3),
                      "events": kind_events[k]} for k in KINDS},
        "modules_s": {k: round(v / 1e9, 6) for k, v in per_module.most_common()},
        "top_ops": [{"op": k, "s": round(v / 1e9, 6), "calls": calls[k], "what": shapes[k]}
                    for k, v in ops.most_common(top)],
        "top_shapes": [{"what": k, "s": round(v / 1e9, 6), "calls": shape_calls[k],
                        "ops": len(shape_ops[k])} for k, v in by_shape.most_common(top)],
    }


def profiled(run, trace_dir: str) -> tuple[float, float]:
    """Runs ``run()`` once under the profiler: (wall seconds, CPU seconds of the process)."""
    import jax

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    jax.profiler.stop_trace()
    return wall, usage.ru_utime + usage.ru_stime - cpu0


def train_program(tiny: bool, batch: int = 1, seq: int = 0, remat: str = "attention",
                  lora_grad: str = "autodiff", matmul_dtype: str | None = None
                  ) -> tuple[str, object]:
    import bench_train

    shape = dict(bench_train.PRESETS["tiny" if tiny else "smollm2-135m"])
    shape.update(batch=batch, seq=seq or (128 if tiny else 1024))
    entry = bench_train.build_jax(shape, "lora", "float32", remat=remat, lora_grad=lora_grad,
                                  matmul_dtype=matmul_dtype)
    name = "tiny" if tiny else "smollm2-135m"
    grad = "" if lora_grad == "autodiff" else f"/lora_grad={lora_grad}"
    grad += "" if matmul_dtype is None else f"/matmul={matmul_dtype}"
    return f"train/{name}/lora/{shape['batch']}x{shape['seq']}/remat={remat}{grad}", entry["run"]


def decode_program(tiny: bool, work: Path, key_layout: str = "SH",
                   unroll_layers: bool = False, matmul_dtype: str | None = None
                   ) -> tuple[str, object]:
    import jax
    from bench_generate import load_hf, load_tokenizer, make_prompts, smollm2_checkpoint
    from real_run import TINY, _random_model

    from semievol_jax.generate.generator import generate
    from semievol_jax.generate.sampling import SampleConfig
    from semievol_jax.model import set_matmul_dtype

    if tiny:
        ckpt, weights = _random_model(work / "tiny", TINY), "random (2-layer toy shape)"
    else:
        ckpt, weights = smollm2_checkpoint(work / "smollm2")
    model, _ = load_hf(ckpt)
    set_matmul_dtype(model, matmul_dtype)
    tokenizer = load_tokenizer(ckpt)
    prompts, samples, new = make_prompts(tokenizer, 16, 8, 60, seed=0), 4, 64
    cfg = SampleConfig(temperature=1.0, max_new_tokens=new, stop=(), batch_size=16,
                       key_layout=key_layout, unroll_layers=unroll_layers)

    def run():
        generate(model, tokenizer, prompts, cfg, key=jax.random.key(0), num_samples=samples,
                 progress=False)

    name = "tiny" if tiny else "smollm2-135m"
    layout = "" if key_layout == "SH" else f"/key_layout={key_layout}"
    layout += "/unroll_layers" if unroll_layers else ""
    layout += "" if matmul_dtype is None else f"/matmul={matmul_dtype}"
    return f"decode/{name}/16x{samples}x{new}{layout} ({weights})", run


def _decode_ceiling() -> dict:
    """The decode step's float32 matmuls alone at the profiled batch's 64 slots, timed
    right after it (bench_common.jax_decode_matmul_step_s; scripts/bench_generate.py's
    ceiling), so that the profile's matmul time is read against a rate from the same
    run: this machine's speed drifts between runs."""
    from bench_common import jax_decode_matmul_step_s
    from bench_generate import SMOLLM2

    return {"slots": 64, "step_s": round(jax_decode_matmul_step_s(SMOLLM2, 64), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy shape (smoke test)")
    ap.add_argument("--programs", nargs="+", default=["train", "decode"],
                    choices=["train", "decode"])
    ap.add_argument("--train-shape", default="1x0", metavar="BxT",
                    help="the train step's rows x tokens (T 0: 1,024, 128 with --tiny)")
    ap.add_argument("--remat", default="attention", help="the train step's train.remat")
    ap.add_argument("--lora-grad", default="autodiff", help="the train step's train.lora_grad")
    ap.add_argument("--matmul-dtype", default=None,
                    help="both programs' matmul operand dtype (base.matmul_dtype)")
    ap.add_argument("--key-layout", default="SH",
                    help="the decode program's KV-cache key layout (sample.key_layout)")
    ap.add_argument("--unroll-layers", action="store_true",
                    help="the decode steps' layers as straight-line code (sample.unroll_layers)")
    ap.add_argument("--tag", default="", help="suffix of the programs' keys in the JSON "
                    "(e.g. for a run under other XLA_FLAGS)")
    ap.add_argument("--out", default="results/bench/profile.json")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="semievol-profile-")  # HLO dumps, traces
    work = Path(tmp.name)
    dump = work / "hlo"
    from semievol_jax.environment import set_determinism_flags, set_quiet_imports

    set_determinism_flags()
    set_quiet_imports()
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} "
                               "--xla_dump_hlo_as_text").strip()
    os.environ["SEMIEVOL_XLA_CACHE"] = "off"  # a cache hit compiles, and dumps, nothing
    import jax

    # Nor JAX's own persistent cache, which $JAX_COMPILATION_CACHE_DIR may turn on.
    jax.config.update("jax_enable_compilation_cache", False)
    from bench_common import cpu_model, load_average

    batch, seq = (int(x) for x in args.train_shape.split("x"))
    results = {}
    for program in args.programs:
        key, run = (train_program(args.tiny, batch, seq, args.remat, args.lora_grad,
                                  args.matmul_dtype)
                    if program == "train"
                    else decode_program(args.tiny, work, args.key_layout, args.unroll_layers,
                                        args.matmul_dtype))
        start = time.perf_counter()
        run()  # compiles
        first_call_s = time.perf_counter() - start
        load = load_average()
        trace = str(work / f"trace-{program}")
        wall, cpu = profiled(run, trace)
        key += f"/{args.tag}" if args.tag else ""
        results[key] = {"cpu_model": cpu_model(), "load_average_before": load,
                        "first_call_s": round(first_call_s, 1),
                        "xla_flags": os.environ["XLA_FLAGS"].split(" --xla_dump_to")[0],
                        **summarize(op_events(trace), load_modules(str(dump)), wall, cpu)}
        if program == "decode" and not args.tiny:
            results[key]["matmul_ceiling"] = _decode_ceiling()
        _print(key, results[key])
    command = " ".join(["python scripts/profile_cpu.py", *sys.argv[1:]])
    for r in results.values():
        r["command"] = command
    doc_path = Path(args.out)
    doc = json.loads(doc_path.read_text()) if doc_path.is_file() else {}
    doc.setdefault("runs", {}).update(results)
    doc.update(command=command,
               device=f"{jax.devices()[0].platform}:{platform.processor() or platform.machine()}",
               cpu_count=os.cpu_count(), jax=jax.__version__,
               xla_flags=os.environ["XLA_FLAGS"].split(" --xla_dump_to")[0])
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {doc_path}")
    tmp.cleanup()
    return 0


def _print(key: str, r: dict) -> None:
    print(f"\n{key}: {r['wall_s']} s wall, {r['cores_busy']} cores busy, "
          f"{r['op_s']} s of op time; first call (compiling) {r['first_call_s']} s")
    print(f"  {'kind':14s} {'s':>8s} {'share':>6s}")
    for k, v in r["kinds"].items():
        print(f"  {k:14s} {v['s']:8.3f} {v['share']:6.1%}")
    if "matmul_ceiling" in r:
        print(f"  matmul ceiling: {r['matmul_ceiling']['step_s']} s a step at "
              f"{r['matmul_ceiling']['slots']} slots")
    for op in r["top_ops"][:8]:
        print(f"  {op['s']:8.3f} s {op['calls']:5d}x  {op['op']}  {op['what']}")
    print("  by shape:")
    for op in r["top_shapes"][:8]:
        print(f"  {op['s']:8.3f} s {op['calls']:5d}x {op['ops']:3d} ops  {op['what']}")


if __name__ == "__main__":
    raise SystemExit(main())
