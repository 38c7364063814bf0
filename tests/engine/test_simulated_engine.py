"""The simulated engine: the real scheduler around a forward pass whose time comes from a GPU cost model."""

from __future__ import annotations

import time

import pytest

from plait.engine import EngineConfig, EngineCore, GenerateRequest, InvalidRequestError, SamplingParams
from plait.engine.forward_batch import SequenceLayout
from plait.engine.model_config import DUMMY_SHAPES
from plait.engine.simulated_gpu import PROFILES, StepCostModel, gpu_profile


def test_the_cost_model_is_the_roofline_of_the_step():
    model = DUMMY_SHAPES["llama-3.1-8b"]
    h200 = StepCostModel(model, PROFILES["h200"])
    decode_1 = h200.seconds([SequenceLayout(0, 511, 1)])
    # Batch 1 decode reads the 16 GB of weights: ~4.8 ms on the H200's measured bandwidth (plus the launch floor).
    assert 4.5e-3 < decode_1 < 6e-3
    # 64 decodes of 1k context also read 64k tokens of KV (128 KiB each): memory-bound, longer, far from 64x.
    decode_64 = h200.seconds([SequenceLayout(i, 1023, 1) for i in range(64)])
    assert decode_1 * 1.3 < decode_64 < decode_1 * 3
    # A 2048-token prefill is compute-bound: ~2 * 8e9 * 2048 FLOP at 6.7e14 FLOP/s, about 50 ms.
    prefill = h200.seconds([SequenceLayout(0, 0, 2048)])
    assert 0.04 < prefill < 0.07
    assert StepCostModel(model, PROFILES["h100"]).seconds([SequenceLayout(0, 511, 1)]) > decode_1


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(InvalidRequestError, match="h200"):
        gpu_profile("a100")
    with pytest.raises(InvalidRequestError, match="h100"):
        EngineConfig(model="tiny", weights="dummy", simulate="tpu").validate()


def _sim_core(**overrides: object) -> EngineCore:
    return EngineCore(EngineConfig(model="llama-3.1-8b", weights="dummy", simulate="h200", kv_slots=4096, **overrides))


def test_a_simulated_engine_serves_requests_at_the_modelled_speed():
    core = _sim_core()
    assert core.model is None and core.kv_pool.num_layers == 1  # no weights, a KV pool of slot counts only
    sampling = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    requests = [GenerateRequest(prompt_token_ids=list(range(100 + i, 400 + i)), sampling=sampling) for i in range(4)]
    for request in requests:
        core.add_request(request)
    started = time.perf_counter()
    tokens: dict[str, int] = {}
    while core.has_work():
        for delta in core.step():
            tokens[delta.request_id] = tokens.get(delta.request_id, 0) + len(delta.token_ids)
    wall = time.perf_counter() - started
    assert tokens == {r.request_id: 16 for r in requests}
    modelled = core.stats().modelled_device_s
    assert modelled > 16 * 4.5e-3  # at least 16 weight-bound decode steps
    assert wall >= modelled * 0.95  # every step lasted at least its modelled device time
    assert core.kv_in_use() == 0


def test_a_simulated_engine_refuses_what_needs_real_outputs():
    core = _sim_core()
    constrained = GenerateRequest(prompt="pick", sampling=SamplingParams(max_tokens=4, choices=["a", "b"]))
    with pytest.raises(InvalidRequestError, match="simulated"):
        core.prepare(constrained)
    with pytest.raises(InvalidRequestError, match="simulated"):
        core.prompt_logits([1, 2, 3])
