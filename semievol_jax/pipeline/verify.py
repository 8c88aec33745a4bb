"""`semievol verify`: a results directory's files against their records, then a fresh run
of the same kind against its digests.

The fresh run is made by a `rerun(provenance, out_dir)` the caller gives (the CLI
dispatches on the provenance record's kind to the command that made the directory), so
this module knows nothing of what a demo or an ablation is.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semievol_jax import environment
from semievol_jax.errors import UserError
from semievol_jax.pipeline.provenance import Provenance, read_provenance, recorded_cpu
from semievol_jax.pipeline.runner import (
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


def hardware_note(expected: Path, got: Path | None = None) -> str | None:
    """Why digests may differ between two runs: they were made on different CPU kinds
    (XLA compiles CPU programs for the host's vector units, so float rounding differs),
    or the expected run does not say which. `got` None (or recording nothing) stands for
    this machine. None when both name the same kind."""
    want = recorded_cpu(expected)
    have = (recorded_cpu(got) if got is not None else None) or \
        environment.cpu_kind(environment.cpu_info())
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
    expected = digest_table(run_dir)
    if bad := stages_off_record(run_dir):
        print("\n".join(bad))
        return 1
    print(f"{len(expected)} run(s): every stage on disk matches its record")
    if rerun is None and fresh is None:
        return 0
    if fresh is not None:
        other = Path(fresh)
    else:
        prov = read_provenance(run_dir)
        if said := hardware_note(run_dir):  # before a rerun that may take a while
            print(said)
        other = Path(tempfile.mkdtemp(prefix="semievol-verify-"))
        rerun(prov, other)
    got = digest_table(other)
    diffs = []
    for sub, stages in expected.items():
        for line in compare_manifests({k: {"output_digest": v} for k, v in stages.items()},
                                      {k: {"output_digest": v}
                                       for k, v in got.get(sub, {}).items()}):
            diffs.append(f"{sub}/{line}")
    if fresh is None:
        shutil.rmtree(other, ignore_errors=True)
    if diffs:
        print("first difference: " + diffs[0])
        print("\n".join(diffs[1:]))
        if fresh is not None and (note := hardware_note(run_dir, other)):
            print(note)
        return 1
    print("fresh run reproduces every digest")
    return 0
