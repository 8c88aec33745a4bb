"""`semievol verify`: a results directory's files against their records, then a fresh run
of the same kind against its digests.

The fresh run is made by a `rerun(provenance, out_dir)` the caller gives (the CLI
dispatches on the provenance record's kind to the command that made the directory), so
this module knows nothing of what a demo or an ablation is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semievol_jax import environment
from semievol_jax.errors import UserError
from semievol_jax.pipeline.provenance import (
    PROVENANCE,
    Provenance,
    read_provenance,
    recorded_cpu,
)
from semievol_jax.pipeline.runner import (
    DIGESTS,
    digest_dir,
    digest_table,
    read_json_file,
    read_record,
    run_manifests,
)

Rerun = Callable[[Provenance, Path], Any]


def compare_manifests(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Lines naming every stage whose digest differs, in pipeline order."""
    diffs = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            diffs.append(f"{name}: missing in the fresh run")
        elif have["output_digest"] != want["output_digest"]:
            diffs.append(f"{name}: {want['output_digest'][:12]} != {have['output_digest'][:12]}")
    return diffs


def stages_off_record(run_dir: Path) -> list[str]:
    """The stages on disk whose files, or manifest entry, differ from their record; each
    line says which of the two it is."""
    bad = []
    for mf in run_manifests(run_dir):
        entries = read_json_file(mf, "manifest")
        if not isinstance(entries, dict):
            raise UserError(f"{mf}: not a run manifest (expected {{stage: entry}})")
        for name, entry in entries.items():
            sub = mf.parent.relative_to(run_dir).as_posix()
            where = name if sub == "." else f"{sub}/{name}"
            if not (isinstance(entry, dict) and {"dir", "output_digest"} <= set(entry)):
                bad.append(f"{where}: its manifest entry is malformed ({mf})")
                continue
            d = (mf.parent / entry["dir"]).resolve()
            rec = read_record(d)
            if rec is None:
                bad.append(f"{where}: no readable record in {d}")
            elif digest_dir(d) != rec.get("outputs"):
                bad.append(f"{where}: files differ from record")
            elif rec.get("output_digest") != entry["output_digest"]:
                bad.append(f"{where}: the manifest's digest differs from the stage's record "
                           f"(the files match the record; {mf.name} was changed)")
    return bad


def recorded_cpu_mode(run_dir: Path) -> str | None:
    """The CPU mode a run directory says it was made in (digests.json, else the
    provenance record, else the report's metrics.json); None when it records none (made
    before the modes existed: then XLA's defaults, the native mode)."""
    run_dir = Path(run_dir)
    key = environment.CPU_MODE_KEY
    for name, get in ((DIGESTS, lambda d: d.get(key)),
                      (PROVENANCE, lambda d: d.get("machine", {}).get(key)),
                      ("metrics.json", lambda d: d.get("device", {}).get(key))):
        path = run_dir / name
        if path.exists() and (found := get(json.loads(path.read_text()))):
            return found["mode"] if isinstance(found, dict) else str(found)
    return None


def stage_digests(root: Path) -> dict[str, dict[str, str]]:
    """`runner.digest_table` without the CPU mode that a committed digests.json keeps
    beside the runs."""
    return {k: v for k, v in digest_table(root).items() if k != environment.CPU_MODE_KEY}


def hardware_note(expected: Path, got: Path | None = None) -> str | None:
    """Why digests may differ between two runs: they were made in different CPU modes,
    or in the native mode on different CPU kinds (XLA's platform-dependent math follows
    the host's vector units and vendor), or the expected run does not say which. In the
    reproducible mode on both sides a difference is no such thing: the note says so.
    A run that records no mode was made in the native mode (before the modes existed);
    `got` None stands for this machine (its mode; its CPU, as for a `got` that records
    none). None when there is nothing to say (same mode, same kind)."""
    want_mode = recorded_cpu_mode(expected) or "native"
    have_mode = (recorded_cpu_mode(got) or "native") if got is not None else \
        environment.cpu_mode_in_effect()
    if want_mode != have_mode:
        return (f"note: {expected} was made in CPU mode {want_mode!r}, the rerun in "
                f"{have_mode!r}: the modes compute differently, so digests differ "
                f"({environment.CPU_MODE_ENV}={want_mode} reruns in its mode)")
    want = recorded_cpu(expected)
    have = (recorded_cpu(got) if got is not None else None) or \
        environment.cpu_kind(environment.cpu_info())
    if want_mode == "reproducible":
        if got is None:  # before a rerun: nothing to say yet
            return None
        kinds = f"{want} and {have}" if want != have else f"{have} on both sides"
        return (f"note: same CPU mode 'reproducible', different bits ({kinds}): that "
                "mode gives the same digests on every CPU kind in results/repro; "
                "`semievol selftest` names the first program that differs")
    why = ("XLA compiles CPU programs for the host's vector units, so digests reproduce "
           "only on the same kind of CPU")
    if want is None:
        return f"note: {expected} does not record its CPU; this rerun ran on {have} ({why})"
    if want != have:
        return f"note: {expected} was made on {want}, the rerun on {have} ({why})"
    return None


def verify(run_dir: Path, *, rerun: Rerun | None = None, fresh: str | None = None) -> int:
    """Check a run's files against their records, then compare every digest with a fresh
    run: `fresh` (a directory made already), else one `rerun` makes from the run's
    provenance record into a temporary directory; neither: the files only.

    Works on a full run directory, or on a committed summary holding only digests.json
    and the provenance record: then only the comparison applies. Returns the exit code
    (0: everything matches).
    """
    run_dir = Path(run_dir)
    expected = stage_digests(run_dir)
    if bad := stages_off_record(run_dir):
        print("\n".join(bad))
        return 1
    print(f"{len(expected)} run(s): every stage on disk matches its record")
    if rerun is None and fresh is None:
        return 0
    said = None
    if fresh is not None:
        other = Path(fresh)
    else:
        prov = read_provenance(run_dir)
        if said := hardware_note(run_dir):  # before a rerun that may take a while
            print(said)
        other = Path(tempfile.mkdtemp(prefix="semievol-verify-"))
        rerun(prov, other)
    got = stage_digests(other)
    diffs = []
    for sub, stages in expected.items():
        for line in compare_manifests({k: {"output_digest": v} for k, v in stages.items()},
                                      {k: {"output_digest": v}
                                       for k, v in got.get(sub, {}).items()}):
            diffs.append(f"{sub}/{line}")
    note = hardware_note(run_dir, other) if diffs else None
    if fresh is None:
        shutil.rmtree(other, ignore_errors=True)
    if diffs:
        print("first difference: " + diffs[0])
        print("\n".join(diffs[1:]))
        if note and note != said:
            print(note)
        return 1
    print("fresh run reproduces every digest")
    return 0
