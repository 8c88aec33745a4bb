"""Run a command and record the peak memory of its whole process tree.

`/usr/bin/time -v` reports the largest single process, which undercounts a command
whose work is spread over worker processes (`semievol demo --jobs N`). This samples the
summed resident set size (RSS) and proportional set size (PSS, shared pages split
between their users) of the command and all its descendants, and writes the peaks.

    python scripts/tree_memory.py --out results/demo/tree-memory.json -- \
        .venv/bin/semievol demo --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sample(procs: list[psutil.Process]) -> tuple[int, int, int]:
    rss = pss = n = 0
    for p in procs:
        try:
            m = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss, n = rss + m.rss, pss + getattr(m, "pss", m.rss), n + 1
    return rss, pss, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given")
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    root = psutil.Process(child.pid)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    while child.poll() is None:
        rss, pss, n = _sample(_tree(root))
        peak = {"rss": max(peak["rss"], rss), "pss": max(peak["pss"], pss),
                "processes": max(peak["processes"], n)}
        time.sleep(args.interval)
    rec = {"command": cmd, "exit_status": child.returncode,
           "wall_s": round(time.perf_counter() - start, 1),
           "peak_tree_rss_gb": round(peak["rss"] / 1e9, 3),
           "peak_tree_pss_gb": round(peak["pss"] / 1e9, 3),
           "max_processes": peak["processes"], "interval_s": args.interval}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec, indent=2))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
