"""The `semievol` command line: thin argument parsing; the logic lives in the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semievol_jax import __version__, convert
from semievol_jax.environment import (
    configure_malloc,
    describe,
    enable_compilation_cache,
    format_env,
    set_determinism_flags,
    set_quiet_imports,
)
from semievol_jax.errors import UserError


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


# The handlers import what they run when they run it: `semievol --help`, `status` and
# `convert` must not wait for JAX and the whole pipeline to import.

def _cmd_env(args: argparse.Namespace) -> int:
    info = describe()
    print(json.dumps(info, indent=2) if args.json else format_env(info))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from semievol_jax import commands

    return commands.run(args.config, args.overrides, run_dir=args.run_dir,
                        ablate=args.command == "ablate", until=getattr(args, "until", None),
                        strict=args.strict)


def _cmd_validate(args: argparse.Namespace) -> int:
    from semievol_jax import commands

    return commands.validate(args.config, args.overrides, run_dir=args.run_dir,
                             strict=args.strict)


def _cmd_demo(args: argparse.Namespace) -> int:
    from semievol_jax import commands

    return commands.demo(args.out, quick=args.quick, overrides=args.overrides,
                         workers=args.jobs)


def _cmd_study(args: argparse.Namespace) -> int:
    from semievol_jax import commands

    return commands.study(args.config, args.overrides, out=args.out, seeds=args.seeds,
                          ablation_seeds=args.ablation_seeds, variants=args.variant,
                          workers=args.jobs)


def _cmd_status(args: argparse.Namespace) -> int:
    from semievol_jax.pipeline.runner import status

    rows = status(Path(args.run_dir))
    if not rows:
        print(f"{args.run_dir}: no stages found (not a run directory, or nothing ran yet)",
              file=sys.stderr)
        return 1
    for r in rows:
        wall = f"{r['wall_s']:.1f}s" if r["wall_s"] is not None else ""
        print(f"{r['stage']:<28} {r['state']:<10} {wall:>9}  {r['output_digest']}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from semievol_jax import commands

    return commands.check(args.run_dir, rerun_it=not args.no_rerun, fresh=args.fresh)


def _cmd_selftest(args: argparse.Namespace) -> int:
    from semievol_jax import selftest

    return selftest.main(as_json=args.json,
                         records_dir=Path(args.records) if args.records else selftest.RECORDS)


def _cmd_convert(args: argparse.Namespace) -> int:
    return convert.main(args)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from semievol_jax.errors import UserError
    from semievol_jax.model import registry

    if args.list:
        for spec in registry.MODELS.values():
            state = "fetched" if registry.is_fetched(spec.name) else "not fetched"
            print(f"{spec.name:<26} {spec.requirement:<22} {spec.license:<12} {state}")
        return 0
    if not args.name:
        raise UserError("fetch: give a model name (see semievol fetch --list)")
    path = registry.fetch(args.name, log=lambda s: print(s, file=sys.stderr))
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semievol",
        description="SemiEvol semi-supervised LLM fine-tuning in JAX (arXiv 2410.14745).",
    )
    p.add_argument("--version", action="version", version=f"semievol-jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True,
                        help="preset name (e.g. demo, llama3.1-8b-mmlu) or a YAML file")
        sp.add_argument("--run-dir", default=None,
                        help="run directory (default: results/<run.name>)")
        sp.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. sft.train.learning_rate=1e-4")
        sp.add_argument("--strict", action="store_true",
                        help="refuse repeated rows and unusable unlabeled gold answers "
                             "(otherwise kept, with a note)")

    sp = sub.add_parser("run", help="run the SemiEvol pipeline (skips finished stages)")
    with_config(sp)
    sp.add_argument("--until", default=None, metavar="STAGE",
                    help="stop after this stage of round 1 (data, base, sft, index, propose, "
                         "select, final or eval)")
    sp.set_defaults(fn=_cmd_run)

    sp = sub.add_parser("ablate", help="run the pipeline and its ablations into one table")
    with_config(sp)
    sp.set_defaults(fn=_cmd_run)

    sp = sub.add_parser("validate", help="check settings, checkpoint and the three splits "
                                         "as a run would; writes nothing")
    with_config(sp)
    sp.set_defaults(fn=_cmd_validate)

    sp = sub.add_parser("demo", help="the embedded demo: synthetic task, tiny model, 3 seeds")
    sp.add_argument("--out", default="results/demo", help="output directory")
    sp.add_argument("--quick", action="store_true", help="one seed, no sweep (a smoke run)")
    sp.add_argument("--jobs", type=_positive_int, default=None,
                    help="worker processes for the independent runs (default: one per core, "
                         "at most 4; the digests do not depend on it)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides of the demo preset")
    sp.set_defaults(fn=_cmd_demo)

    sp = sub.add_parser("study", help="a preset over seeds with its ablation rows, one "
                                      "report (mean and std over seeds)")
    sp.add_argument("--config", required=True, help="preset name or YAML file")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sp.add_argument("--ablation-seeds", type=int, nargs="*", default=None,
                    help="seeds that also run the ablations (default: every seed)")
    sp.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V[,KEY=V]",
                    help="one more row, run for the first seed: its name and overrides, "
                         "e.g. official_final_lr:final.train.learning_rate=1e-6")
    sp.add_argument("--jobs", type=_positive_int, default=None,
                    help="worker processes (default: one per core, at most 4)")
    sp.add_argument("overrides", nargs="*", help="dotted overrides of the preset")
    sp.set_defaults(fn=_cmd_study)

    sp = sub.add_parser("status", help="which stages of a run are done")
    sp.add_argument("run_dir")
    sp.set_defaults(fn=_cmd_status)

    sp = sub.add_parser("verify", help="rerun (as provenance.json says) and compare every "
                                       "stage digest with the run's")
    sp.add_argument("run_dir")
    sp.add_argument("--no-rerun", action="store_true",
                    help="only check the files on disk against their records")
    sp.add_argument("--fresh", default=None,
                    help="compare against this already-made fresh run instead of rerunning")
    sp.set_defaults(fn=_cmd_verify)

    sp = sub.add_parser("selftest", help="~30 s: small fixed programs against the digests "
                                         "committed per CPU kind (results/repro)")
    sp.add_argument("--json", action="store_true", help="the run and verdict as JSON")
    sp.add_argument("--records", default=None, help="committed records (default: the "
                                                      "repository's results/repro)")
    sp.set_defaults(fn=_cmd_selftest)

    sp = sub.add_parser("convert", help="checkpoint tools: tiny checkpoints, LoRA merge, export")
    convert.add_arguments(sp)
    sp.set_defaults(fn=_cmd_convert)

    sp = sub.add_parser("fetch", help="download a pinned model into the cache; prints its path")
    sp.add_argument("name", nargs="?", help="e.g. smollm2-135m-instruct (see --list)")
    sp.add_argument("--list", action="store_true", help="the fetchable models")
    sp.set_defaults(fn=_cmd_fetch)

    sp = sub.add_parser("env", help="versions, JAX backend, devices and XLA flags")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    set_determinism_flags()  # before anything starts a JAX backend
    set_quiet_imports()  # before anything imports transformers (workers inherit it)
    configure_malloc()
    args = build_parser().parse_args(argv)
    if args.command in ("run", "ablate", "demo", "study", "verify"):
        enable_compilation_cache()
    try:
        return int(args.fn(args) or 0)
    except UserError as e:  # bad input: one clear message, no traceback
        print(f"semievol: error: {e}", file=sys.stderr)
        return 2
