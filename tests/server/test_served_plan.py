"""A real ``plait serve`` runs the plan it was started with: ``GET /server_info`` reads the policy the engine
schedules under, ``plait.Client`` runs on it, and the anti-starvation bound promotes a request that waited too long
ahead of more important work, which ``--plan baseline`` does not."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

import plait
from plait.engine import EnginePolicy
from plait.runtime.planning import PlanConfig
from tests.served_process import REPO_ROOT, TINY_ARGS, Served, serve

API_KEY = "plan-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _info(served: Served) -> dict:
    response = httpx.get(f"{served.url}/server_info", headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@plait.program
async def two_calls(p: plait.Program, text: str):
    first = p.gen("Say: {{text}}", text=text, max_tokens=3)
    return p.gen("Then: {{first}}", first=first, max_tokens=3)


@pytest.mark.parametrize(
    ("flags", "plan"),
    [((), PlanConfig()), (("--plan", "baseline"), PlanConfig.baseline())],
    ids=["default", "baseline"],
)
def test_the_served_engine_runs_the_plans_policy_and_client_programs_run_on_it(
    flags: tuple[str, ...], plan: PlanConfig
) -> None:
    with serve(*flags, api_key=API_KEY) as served:
        assert httpx.get(f"{served.url}/server_info", timeout=30).status_code == 401  # authenticated

        async def through_the_client() -> object:
            async with plait.Client(served.url, api_key=API_KEY) as client:
                return await client.run(two_calls, text="hi")

        assert asyncio.run(through_the_client()) is not None
        info = _info(served)
    policy = info["engine"]["policy"]
    assert policy == plan.engine.to_dict() and info["plan"]["engine_policy"] == policy
    assert info["plan"]["name"] == plan.name and info["plan"]["enabled"] == plan.enabled
    assert info["engine"]["device"] == "cpu" and info["version"] == plait.__version__
    log = "".join(served.log)
    assert f"plan: {plan.name}" in log
    for line in plan.describe():  # one line per enabled feature at start-up
        assert line in log
    if plan.name == "plait":  # next-use eviction, the anti-starvation bound and cache affinity on
        assert policy["eviction"] == "next-use" and policy["max_queue_wait_s"] == 30.0
        assert policy["affinity_window_s"] > 0 and "cache_affinity" in info["plan"]["enabled"]
    else:  # all off
        assert EnginePolicy(**policy) == EnginePolicy.request_level() and info["plan"]["enabled"] == []


def test_a_bad_plan_stops_the_server_with_a_message() -> None:
    command = [sys.executable, "-m", "plait", "serve", "--port", "0", "--plan", "eviction=fifo", *TINY_ARGS]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 2 and "error: plan:" in result.stderr and "eviction" in result.stderr


async def _completion_order(url: str) -> list[str]:
    """One long request occupies the only row; then a low-priority request (``late``) and three high-priority ones
    queue behind it. Returns the order in which the queued ones finished."""
    finished: list[str] = []

    async def complete(client: httpx.AsyncClient, name: str, priority: int, tokens: int) -> None:
        body = {"model": "tiny", "prompt": f"{name}:", "max_tokens": tokens, "ignore_eos": True, "priority": priority}
        response = await client.post(f"{url}/v1/completions", json=body, headers=HEADERS, timeout=120)
        assert response.status_code == 200, response.text
        finished.append(name)

    async with httpx.AsyncClient() as client:
        long = asyncio.create_task(complete(client, "long", 0, 1500))
        await asyncio.sleep(0.4)  # the long request holds the row
        tasks = [asyncio.create_task(complete(client, "late", 10, 8))]
        await asyncio.sleep(0.1)
        tasks += [asyncio.create_task(complete(client, f"urgent{i}", 0, 64)) for i in range(3)]
        await asyncio.gather(long, *tasks)
    return [name for name in finished if name != "long"]


def test_a_request_waiting_past_the_anti_starvation_bound_goes_ahead_of_higher_priority_work() -> None:
    one_row = ("--max-running", "1", "--max-context", "2048", "--kv-slots", "8192")
    with serve("--plan", "max_queue_wait_s=0.2", *one_row, api_key=API_KEY) as served:
        assert _info(served)["engine"]["policy"]["max_queue_wait_s"] == 0.2
        promoted = asyncio.run(_completion_order(served.url))
    with serve("--plan", "baseline", *one_row, api_key=API_KEY) as served:
        strict = asyncio.run(_completion_order(served.url))
    # Every queued request waited past 0.2 s behind the long one: promoted, they go first-come first-served.
    assert promoted[0] == "late", promoted
    # Without aging, priority order holds: the low-priority request goes last.
    assert strict[-1] == "late", strict
