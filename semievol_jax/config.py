"""Config loading: typed dataclass schemas, YAML presets, dotted overrides (OmegaConf)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semievol_jax.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A preset or override that does not fit the config schema."""


def preset_names() -> list[str]:
    """Names of the presets shipped in `semievol_jax/presets/*.yaml`."""
    return sorted(p.name[:-5] for p in resources.files("semievol_jax.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _read_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config file ({e})") from e
    elif path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"{path}: no such config file")
    else:
        res = resources.files("semievol_jax.presets") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}: not a YAML file, and not one of "
                f"{', '.join(preset_names())}"
            )
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name_or_path}:{mark.line + 1}" if mark is not None else name_or_path
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({what})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name_or_path!r} must be a YAML mapping, got "
                          f"{type(data).__name__}")
    return data


def _with_parents(name_or_path: str, seen: tuple[str, ...] = ()) -> Any:
    """The preset merged over the preset it `extends` (a name or a YAML path), if any, so
    a family of presets (one per task) keeps its shared settings in one file."""
    data = _read_preset(name_or_path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or parent in seen + (name_or_path,):
        raise ConfigError(f"preset {name_or_path!r}: extends {parent!r} is not a preset name "
                          "or extends itself")
    return OmegaConf.merge(_with_parents(parent, seen + (name_or_path,)), data)


def load_config(schema: type[T], preset: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build a frozen `schema` instance from a preset and dotted overrides.

    Args:
      schema: the dataclass type of the whole config (its fields are stage sub-configs).
      preset: a preset name (`semievol_jax/presets/<name>.yaml`) or a YAML file path.
      overrides: `a.b=value` strings, applied last, type-checked against the schema.

    Raises:
      ConfigError: an unknown key, a value of the wrong type, or a malformed override.
    """
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key.sub=value; got {bad}")
    values = _with_parents(preset) if preset else {}
    merged = None
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(schema),
            values,
            OmegaConf.from_dotlist(list(overrides)),
        )
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0] + f" (key: {getattr(e, 'full_key', '?')})"
        if msg.startswith("Incompatible value 'None'"):
            msg += "; `key=` is null: write key='' for an empty text"
        raise ConfigError(msg) from e
    except (ValueError, TypeError) as e:  # a sub-config's own check (__post_init__)
        where = "config" if merged is None else _failing_node(merged)
        raise ConfigError(f"{where}: {e}") from e


def _failing_node(node: DictConfig, path: str = "") -> str:
    """The dotted path of the deepest sub-config that cannot be built (its own check
    refused a value), for a message that names the setting."""
    for key in node:
        child = node.get(key)
        if isinstance(child, DictConfig):
            where = f"{path}.{key}" if path else str(key)
            try:
                OmegaConf.to_object(child)
            except (ValueError, TypeError, OmegaConfBaseException):
                return _failing_node(child, where)
    return path or "config"


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (written into every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
