"""How a results directory was made: which command, with which arguments, on what.

Every `semievol run`, `ablate` and `demo` writes `provenance.json` into its output
directory first, so `semievol verify` can make a fresh run of the same kind with the
same arguments and compare digests, and can say on which kind of CPU the original ran
(digests reproduce on the same kind only). A directory made before this record existed,
with only a `config.yaml`, counts as a `run` of that config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from semievol_jax import environment
from semievol_jax.errors import UserError
from semievol_jax.files import write_json_atomic

PROVENANCE = "provenance.json"
KINDS = ("run", "ablate", "demo", "study")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What made a results directory.

    Attributes:
      kind: the command: "run", "ablate", "demo" or "study".
      args: its arguments, by name, as the command takes them (JSON values); what the
        results depend on.
      machine: where it ran (the CPU, as `environment.cpu_info` names it, its mode as
        `environment.cpu_mode_record` says, and whatever
        else the command records: worker count, malloc settings); what the wall time
        depends on, and on which kind of CPU the digests reproduce.
    """

    kind: str
    args: dict[str, Any]
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"provenance kind must be one of {KINDS}, got {self.kind!r}")


def write_provenance(out: Path, kind: str, args: dict[str, Any], **machine: Any) -> Provenance:
    """Record in `out` that `kind` made it with `args`, on this machine's CPU (plus
    `machine`); returns the record."""
    prov = Provenance(kind, dict(args), {"cpu": environment.cpu_info(),
                                         environment.CPU_MODE_KEY: environment.cpu_mode_record(),
                                         **machine})
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out) / PROVENANCE, dataclasses.asdict(prov))
    return prov


def read_provenance(run_dir: Path) -> Provenance:
    """The record of `run_dir`; for a directory without one, a `run` of its config.yaml.

    Raises:
      UserError: neither a provenance record nor a config.yaml.
    """
    path = Path(run_dir) / PROVENANCE
    if path.exists():
        try:
            d = json.loads(path.read_text())
            return Provenance(d["kind"], dict(d["args"]), d.get("machine", {}))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: unreadable provenance record "
                            f"({type(e).__name__}: {e})") from e
    config = Path(run_dir) / "config.yaml"
    if config.exists():
        return Provenance("run", {"config": str(config), "overrides": []})
    raise UserError(f"{run_dir}: no {PROVENANCE} and no config.yaml: cannot tell how it "
                    "was made")


def recorded_cpu(run_dir: Path) -> str | None:
    """The CPU kind a run directory says it was made on (its provenance record, else
    the report's metrics.json), or None when it records none (or is unreadable)."""
    d = _json_or_empty(Path(run_dir) / PROVENANCE)
    if cpu := (d.get("machine") or {}).get("cpu"):
        return environment.cpu_kind(cpu)
    d = _json_or_empty(Path(run_dir) / "metrics.json")
    if cpu := (d.get("device") or {}).get("cpu"):
        return environment.cpu_kind(cpu) if isinstance(cpu, dict) else str(cpu)
    return None


def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}
