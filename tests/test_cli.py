"""CLI front door: help, env, config loading and its errors, and no import noise."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from semievol_jax.config import ConfigError, load_config


def semievol(*args):
    return subprocess.run([sys.executable, "-m", "semievol_jax", *args],
                          capture_output=True, text=True)


def test_help_lists_subcommands():
    out = semievol("--help")
    assert out.returncode == 0
    for cmd in ("run", "demo", "ablate", "status", "verify", "convert", "env"):
        assert cmd in out.stdout


def test_env_reports_versions_and_flags():
    out = semievol("env", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["packages"]["jax"] == __import__("jax").__version__
    assert info["jax_backend"] == "cpu"
    assert "--xla_gpu_deterministic_ops=true" in info["XLA_FLAGS"]


def test_status_of_missing_run_is_an_error(tmp_path):
    out = semievol("status", str(tmp_path / "nope"))
    assert out.returncode != 0


# A process in which PyTorch is not installed, as in the runtime environment
# (`find_spec` answers None for a module set to None in sys.modules).
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; "
ADVISORY = "PyTorch was not found"


def test_no_pytorch_advisory_from_the_cli_without_pytorch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    bare = subprocess.run([sys.executable, "-c", WITHOUT_TORCH + "import transformers"],
                          capture_output=True, text=True, env=env)
    assert ADVISORY in bare.stderr  # what transformers says on its own
    cli = WITHOUT_TORCH + "from semievol_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", cli, "convert", "tiny", str(tmp_path / "t")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ADVISORY not in out.stderr + out.stdout


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4  # learning rate
    targets: tuple[str, ...] = ("q", "v")  # modules


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    seed: int = 0


def test_dotted_overrides_are_typed():
    cfg = load_config(Outer, None, ["inner.lr=3e-4", "inner.targets=[q,k,v]", "seed=7"])
    assert cfg == Outer(Inner(3e-4, ("q", "k", "v")), 7)


@pytest.mark.parametrize("bad", ["inner.lrx=1", "inner.lr=abc", "seed"])
def test_bad_overrides_name_the_key(bad):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, [bad])
    assert bad.split("=")[0].split(".")[-1] in str(e.value) or "key.sub=value" in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(Outer, "no-such-preset")
