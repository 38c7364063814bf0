"""What the documentation says about the server's settings is what the code reads: the README's API-key examples
parse, and ``examples/server.toml`` loads and lists every setting with its real default."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from plait.server.config import API_KEYS_ENV, ServerConfig, TenantLimits, parse_api_keys

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
SAMPLE = REPO_ROOT / "examples" / "server.toml"
# A setting written with its default, commented out: "# name = value" or a table header "# [name]" (examples are
# indented further, "#   name = value", and are not defaults).
_COMMENTED_SETTING = re.compile(r"^# ((?:[a-z_]+ = .*)|(?:\[[a-z_]+\]))$")


def _readme_api_key_examples() -> list[str]:
    """Every ``PLAIT_API_KEYS=...`` in the README (the value up to a backtick, a quote or whitespace)."""
    return re.findall(rf"{API_KEYS_ENV}=[\"']?([^`\"'\s]+)", README.read_text(encoding="utf-8"))


def test_readme_api_key_examples_parse() -> None:
    examples = _readme_api_key_examples()
    assert examples, f"README.md shows no {API_KEYS_ENV}= example"
    for example in examples:
        keys = parse_api_keys(example)
        assert keys and all(keys.values()), example
        config = ServerConfig.load(environ={API_KEYS_ENV: example})
        assert config.api_keys == keys


def test_colon_separated_keys_are_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"'k1:team' is not KEY=TENANT \(the separator is '=', not ':'\)"):
        parse_api_keys("k1:team")


def test_sample_server_toml_loads_and_is_referenced() -> None:
    assert ServerConfig.load(SAMPLE) == ServerConfig()
    assert "examples/server.toml" in README.read_text(encoding="utf-8")


def test_sample_server_toml_lists_every_setting_with_its_default() -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    uncommented = "\n".join(m.group(1) for m in map(_COMMENTED_SETTING.match, lines) if m)
    settings = tomllib.loads(uncommented)
    assert set(settings) == {f.name for f in fields(ServerConfig)}
    assert set(settings["limits"]) == {f.name for f in fields(TenantLimits)}
    assert ServerConfig.from_dict(settings) == ServerConfig()  # the documented defaults are the real ones
