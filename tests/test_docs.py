"""The documented example configuration files are complete and true: they load, and they equal
the defaults they claim to list."""

from __future__ import annotations

from pathlib import Path

import msgspec

from builder.config import BuildConfig, load_build_config
from engine.settings import Settings, load

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _keys(obj: object, prefix: str = "") -> set[str]:
    data = msgspec.to_builtins(obj)
    out: set[str] = set()
    for k, v in data.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= {f"{prefix}{k}.{sub}" for sub in v}
    return out


def test_build_example_lists_every_key_with_its_default() -> None:
    text = (DOCS / "build.example.toml").read_text()
    assert load_build_config(DOCS / "build.example.toml") == BuildConfig()
    for key in _keys(BuildConfig()):
        assert key.split(".")[-1] in text, key


def test_settings_example_lists_every_key_with_its_default() -> None:
    text = (DOCS / "settings.example.toml").read_text()
    assert load(DOCS / "settings.example.toml") == Settings()
    for key in _keys(Settings()):
        assert key.split(".")[-1] in text, key
