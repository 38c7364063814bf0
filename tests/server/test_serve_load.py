"""``plait bench serve-load`` at a small scale on the session's real server: concurrent streaming chats and
workflows all succeed, TTFT is measured for each chat, and afterwards the engine runs nothing and holds no KV."""

from __future__ import annotations

import asyncio

from plait.bench.serve_load import percentile, run_load, summarize
from tests.server.conftest import wait_engine_idle, wait_tenants_released

CHATS = 40
WORKFLOWS = 10
MAX_TOKENS = 8


def test_concurrent_chats_and_workflows_leave_the_engine_idle(live_server, api_key_a) -> None:
    result = asyncio.run(
        run_load(
            live_server.base_url,
            chats=CHATS,
            workflows=WORKFLOWS,
            max_tokens=MAX_TOKENS,
            api_key=api_key_a,
            state=live_server.state,
            timeout_s=120.0,
        )
    )
    assert result.errors == []
    assert len(result.chats) == CHATS and len(result.workflows) == WORKFLOWS
    assert all(1 <= chat.completion_tokens <= MAX_TOKENS for chat in result.chats)
    assert all(chat.ttft_s is not None and 0 < chat.ttft_s <= chat.e2e_s for chat in result.chats)
    assert all(flow.state == "done" and 2 <= flow.completion_tokens <= 2 * MAX_TOKENS for flow in result.workflows)

    idle = result.idle_after
    assert idle["idle"], idle
    assert idle["kv_slots_used"] == 0 and idle["running"] == 0 and idle["waiting"] == 0
    assert idle["kv_usage_ratio"] == 0.0
    stats = wait_engine_idle(live_server.state)
    assert stats.kv_slots_used == 0 and stats.running == 0
    assert all(value == (0, 0) for value in wait_tenants_released(live_server.state).values())

    summary = summarize(result)
    assert summary["errors"] == 0 and summary["chats"]["requests"] == CHATS
    assert 0 < summary["chats"]["ttft_p50_s"] <= summary["chats"]["ttft_p99_s"]
    assert summary["throughput_tok_s"] > 0


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == 99.0
