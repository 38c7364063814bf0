"""Grouping decodes by shared cached prefix (slot identity every GRANULE positions)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from plait.engine import prefix_groups
from plait.engine.prefix_groups import GRANULE, decode_prefix_groups


def fake_seq(shared: list[torch.Tensor], own: int, start: int) -> SimpleNamespace:
    """A running decode whose prompt is the ``shared`` slot runs, then ``own`` slots of its own from ``start``."""
    slots = torch.cat([*shared, torch.arange(start, start + own)])
    return SimpleNamespace(slots=slots, num_prompt=len(slots), prefix_keys=None)


def test_the_widest_saving_prefix_wins_and_small_groups_stay_out():
    instructions = torch.arange(10_000, 10_000 + 8 * GRANULE)  # 2048 tokens every candidate shares
    program = torch.arange(20_000, 20_000 + GRANULE)  # 256 more that four of them share (one fan-out)
    schema = torch.arange(30_000, 30_000 + 2 * GRANULE)  # 512 tokens that ten link calls share: too short
    fan_out = [fake_seq([instructions, program], 100, 100_000 + 1000 * i) for i in range(4)]
    others = [fake_seq([instructions], 300, 200_000 + 1000 * i) for i in range(6)]
    links = [fake_seq([schema], 50, 300_000 + 1000 * i) for i in range(10)]
    loner = [fake_seq([], 3000, 400_000)]
    decodes = fan_out + others + links + loner
    groups = decode_prefix_groups(decodes)
    # 10 x 2048 beats 4 x 2304: the fan-out joins the instructions' group; 512 shared tokens are under the minimum.
    assert [(g.shared_len, g.members) for g in groups] == [(8 * GRANULE, list(range(10)))]
    assert decodes[0].prefix_keys == [*instructions[GRANULE - 1 :: GRANULE].tolist(), program[-1].item()]


def test_fewer_than_min_members_form_no_group(monkeypatch):
    prefix = torch.arange(5000, 5000 + 4 * GRANULE)
    decodes = [fake_seq([prefix], 10, 100_000 + 100 * i) for i in range(prefix_groups.MIN_MEMBERS - 1)]
    assert decode_prefix_groups(decodes) == []
    monkeypatch.setattr(prefix_groups, "MIN_MEMBERS", 2)
    groups = decode_prefix_groups(decodes)
    assert len(groups) == 1 and groups[0].shared_len == 4 * GRANULE


def test_the_simulated_gpu_charges_a_shared_prefix_once_per_tile():
    from plait.engine.forward_batch import SHARED_PREFIX_TILE_SEQS, DecodeGroup, SequenceLayout
    from plait.engine.model_config import DUMMY_SHAPES
    from plait.engine.simulated_gpu import PROFILES, StepCostModel

    cost = StepCostModel(DUMMY_SHAPES["llama-3.1-8b"], PROFILES["h200"])
    layouts = [SequenceLayout(i, 3000, 1) for i in range(32)]
    plain = cost.seconds(layouts)
    grouped = cost.seconds(layouts, [DecodeGroup(2560, list(range(32)))])
    tiles = 32 // SHARED_PREFIX_TILE_SEQS
    saved = 2560 * (32 - tiles) * cost.kv_bytes_per_token / PROFILES["h200"].bandwidth_bytes_per_s
    assert abs((plain - grouped) - saved) < 1e-9
