"""The engine flags every engine-starting command shares reach ``EngineConfig``, and their choices match what the
config accepts (the CLI keeps the names as literals so that ``plait --help`` does not import torch)."""

from __future__ import annotations

import argparse

import pytest

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args
from plait.engine.engine_config import ATTENTION_BACKENDS, EngineConfig
from plait.engine.errors import InvalidRequestError


def _parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(list(flags))


def test_cpu_engine_flags_reach_the_config():
    config = engine_config_from_args(_parse("--packed-weights", "off", "--attention-backend", "cpu"))
    assert config.packed_weights == "off" and config.attention_backend == "cpu"
    assert engine_config_from_args(_parse()).packed_weights == "auto"


def test_the_cli_offers_exactly_the_attention_backends_the_config_accepts():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "attention_backend")
    assert tuple(action.choices) == ATTENTION_BACKENDS


@pytest.mark.parametrize(("field", "value"), [("packed_weights", "always"), ("attention_backend", "flash")])
def test_a_bad_value_is_refused_with_the_field_named(field, value):
    with pytest.raises(InvalidRequestError) as raised:
        EngineConfig(**{field: value}).validate()
    assert field in str(raised.value)
