"""The overlap loop (``EngineConfig.overlap``) changes when the host reads tokens back, never what is generated.

Each scenario runs twice on the same model, overlap off and on, and must give identical deltas (tokens, text, finish
reasons, log-probabilities), with the KV bookkeeping consistent after every step and nothing held at the end.
"""

from __future__ import annotations

from typing import Any

import pytest

from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from tests.conftest import TINY

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _collect(core: EngineCore, requests: list[GenerateRequest], abort_after: dict[str, int] | None = None) -> dict:
    """Run to completion, checking invariants each step; ``abort_after``: request id -> step at which to abort."""
    for i, request in enumerate(requests):
        if request.request_id.startswith("req-"):  # auto ids differ between runs: name them by position
            request.request_id = f"r{i}"
        core.add_request(request)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    step = 0
    while core.has_work():
        deltas = core.step()
        step += 1
        for request_id, at in (abort_after or {}).items():
            if at == step:
                deltas += core.abort(request_id)
        for d in deltas:
            entry = out.setdefault((d.request_id, d.index), {"tokens": [], "text": "", "finish": None, "lp": []})
            entry["tokens"] += d.token_ids
            entry["text"] += d.text
            entry["finish"] = d.finish_reason or entry["finish"]
            if d.logprobs:
                entry["lp"] += [(t.token_id, round(t.logprob, 4), [i for i, _ in t.top]) for t in d.logprobs]
        core.check_invariants()
    assert core.kv_in_use() == 0
    assert not core.requests
    return out


def _both(make_requests, abort_after: dict[str, int] | None = None, **config: Any) -> tuple[dict, dict]:
    results = []
    for overlap in ("off", "on"):
        core = EngineCore(EngineConfig(**{**TINY, **config, "overlap": overlap}))
        assert core.overlap is (overlap == "on")
        results.append(_collect(core, make_requests(), abort_after))
    return results[0], results[1]


def test_mixed_sampling_stop_and_lengths_agree():
    def make() -> list[GenerateRequest]:
        return [
            GenerateRequest(prompt="hello world", sampling=SamplingParams(max_tokens=9, temperature=0.0)),
            GenerateRequest(prompt="abc", sampling=SamplingParams(max_tokens=1, temperature=0.0)),
            GenerateRequest(prompt="seeded", sampling=SamplingParams(max_tokens=12, temperature=1.0, seed=7)),
            GenerateRequest(prompt="fan out", sampling=SamplingParams(max_tokens=6, temperature=0.9, seed=3, n=3)),
            GenerateRequest(
                prompt="stops", sampling=SamplingParams(max_tokens=20, temperature=1.0, seed=5, stop=["e"])
            ),
            GenerateRequest(
                prompt="logprobs", sampling=SamplingParams(max_tokens=5, temperature=0.0, logprobs=True, top_logprobs=3)
            ),
        ]

    off, on = _both(make)
    assert off == on
    assert len(off) == 8  # six requests, one with three samples


def test_retraction_under_memory_pressure_agrees():
    def make() -> list[GenerateRequest]:
        return [
            GenerateRequest(prompt=f"request number {i} " * 3, sampling=SamplingParams(max_tokens=40, temperature=0.0))
            for i in range(6)
        ]

    off, on = _both(make, kv_slots=260, chunk_size=16)
    assert off == on
    assert all(len(v["tokens"]) == 40 for v in off.values())


def test_abort_while_a_token_is_in_flight():
    def make() -> list[GenerateRequest]:
        return [
            GenerateRequest(prompt="keep", sampling=SamplingParams(max_tokens=10), request_id="keep"),
            GenerateRequest(prompt="drop", sampling=SamplingParams(max_tokens=50), request_id="drop"),
        ]

    off, on = _both(make, abort_after={"drop": 4})
    assert off[("keep", 0)] == on[("keep", 0)]
    for result in (off, on):
        assert result[("drop", 0)]["finish"] == "abort"
    # With overlap the abort lands one step earlier in the stream (its last sampled token was never read back).
    assert len(on[("drop", 0)]["tokens"]) <= len(off[("drop", 0)]["tokens"])


def test_grammar_constrained_agrees():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

    def make() -> list[GenerateRequest]:
        return [
            GenerateRequest(
                prompt="json", sampling=SamplingParams(max_tokens=24, temperature=1.0, seed=s, json_schema=schema)
            )
            for s in range(3)
        ] + [
            GenerateRequest(
                prompt="re", sampling=SamplingParams(max_tokens=16, temperature=1.0, seed=9, regex="[a-c]{3,6}")
            )
        ]

    off, on = _both(make)
    assert off == on
