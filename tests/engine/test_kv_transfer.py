"""A cached prefix's KV moves between two engines of the same model: exported rows, imported into free slots and the
radix tree, are what the other engine computes for that prefix; a model of another shape is refused naming ``kv``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from plait.engine import GenerateRequest, InvalidRequestError, PrefixKV, SamplingParams
from tests.conftest import tiny_core


def _run(core, prompt_ids: list[int]) -> list[int]:
    core.add_request(GenerateRequest(prompt_token_ids=prompt_ids, sampling=SamplingParams(max_tokens=4, temperature=0)))
    tokens: list[int] = []
    while core.has_work():
        for delta in core.step():
            tokens += delta.token_ids
    return tokens


def test_exported_kv_imported_elsewhere_is_what_that_engine_computes():
    prompt = [(i * 37) % 500 + 3 for i in range(80)]
    source, target, fresh = tiny_core(), tiny_core(), tiny_core()
    expected = _run(source, prompt)
    kv = source.export_prefix(prompt)
    assert len(kv) >= 64 and kv.token_ids == tuple(prompt[: len(kv)])
    assert target.import_prefix(kv, "p") == len(kv)
    assert target.resident_prefix_length(prompt) == len(kv)
    assert target.import_prefix(kv) == len(kv)  # already there: nothing more taken
    _run(fresh, prompt)
    computed = fresh.export_prefix(prompt)
    for layer in range(len(kv.k)):
        torch.testing.assert_close(kv.k[layer], computed.k[layer][: len(kv)])
        torch.testing.assert_close(kv.v[layer], computed.v[layer][: len(kv)])
    assert _run(target, prompt) == expected  # the next call finds it cached and generates the same
    target.check_invariants()
    assert source.export_prefix([9999 % 500, 1, 2]).token_ids == ()  # nothing cached: empty


def test_kv_of_another_shape_is_refused():
    core = tiny_core()
    rows = [torch.zeros(4, 7, 16) for _ in range(2)]
    with pytest.raises(InvalidRequestError) as raised:
        core.import_prefix(PrefixKV((1, 2, 3, 4), rows, rows))
    assert raised.value.field == "kv" and "same model" in str(raised.value)
    assert dataclasses.is_dataclass(PrefixKV)
