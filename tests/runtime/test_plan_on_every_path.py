"""What runs is what the plan says: ``plait.Runtime`` and ``plait run`` switch the engine to the plan's policy (the
served paths, ``plait serve`` and ``plait.Client``, are in ``tests/server/test_served_plan.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import plait
from plait.engine import EnginePolicy
from plait.runtime.planning import PlanConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]


@plait.program
async def echo(p: plait.Program, text: str):
    return p.gen("Say: {{text}}", text=text, max_tokens=3)


def _applied(engine) -> EnginePolicy:
    """The policy the engine thread schedules under (a queued ``set_policy`` lands before the next request)."""
    return engine.core.scheduler.policy


@pytest.mark.parametrize("plan", [None, PlanConfig.baseline(), PlanConfig().with_overrides(["max_queue_wait_s=3"])])
def test_runtime_applies_the_plans_engine_policy(tiny_engine, plan: PlanConfig | None) -> None:
    expected = (plan or PlanConfig()).engine
    tiny_engine.set_policy(EnginePolicy(eviction="lru", max_queue_wait_s=99.0))  # something else first

    async def main() -> None:
        runtime = plait.Runtime(tiny_engine, plan=plan)
        await runtime.run(echo, text="hi")

    asyncio.run(main())
    applied = _applied(tiny_engine)
    assert applied == expected and tiny_engine.core.policy == expected and tiny_engine.policy == expected
    if plan is None:  # the default plan: next-use eviction, the anti-starvation bound and cache affinity on
        assert applied.eviction == "next-use" and applied.max_queue_wait_s == 30.0 and applied.affinity_window_s > 0
        assert type(tiny_engine.core.prefix_cache.policy).__name__ == "NextUsePolicy"
    elif plan.name == "baseline":  # all off
        assert applied.eviction == "lru" and applied.max_queue_wait_s == 0 and applied.affinity_window_s == 0
        assert not applied.prefix_first and type(tiny_engine.core.prefix_cache.policy).__name__ == "LRUPolicy"


@pytest.mark.parametrize(
    ("plan_flags", "expected"),
    [([], PlanConfig().engine), (["--plan", "baseline"], EnginePolicy.request_level())],
)
def test_plait_run_applies_the_plans_engine_policy(
    plan_flags: list[str], expected: EnginePolicy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from plait.cli import main
    from plait.sdk.runtime import Runtime

    seen: list[EnginePolicy] = []
    close = Runtime.close

    def record_then_close(self: Runtime) -> None:
        seen.append(self.engine.core.scheduler.policy)  # after the run: what its requests were scheduled under
        close(self)

    monkeypatch.setattr(Runtime, "close", record_then_close)
    workflow = REPO_ROOT / "examples" / "workflows" / "qa_check.json"
    tools = f"{REPO_ROOT / 'examples' / 'workflows' / 'tools.py'}:TOOLS"
    code = main(["run", str(workflow), "--tools", tools, "--quiet", *plan_flags, *TINY_ARGS, "--kv-slots", "2048"])
    assert code == 0 and seen == [expected]
    err = capsys.readouterr().err
    assert f"plan: {'baseline' if plan_flags else 'plait'}" in err
    shown = ", ".join(f"{name}={value}" for name, value in expected.to_dict().items())
    assert f"engine policy: {shown}" in err


def test_plait_run_rejects_a_bad_plan_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    from plait.cli import main

    workflow = REPO_ROOT / "examples" / "workflows" / "qa_check.json"
    tools = f"{REPO_ROOT / 'examples' / 'workflows' / 'tools.py'}:TOOLS"
    for bad, message in (("eviction=fifo", "eviction"), ("telepathy=on", "FIELD one of"), ("fast", "baseline")):
        assert main(["run", str(workflow), "--tools", tools, "--plan", bad, *TINY_ARGS]) == 2
        assert message in capsys.readouterr().err


def test_engine_set_policy_is_validated_and_applied_in_order(tiny_engine) -> None:
    from plait.engine import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="pin_budget_fraction"):
        EnginePolicy(pin_budget_fraction=2.0)
    policy = EnginePolicy(eviction="lru", pin_budget_fraction=0.5, max_queue_wait_s=7.0)
    tiny_engine.set_policy(policy)

    async def one_request() -> None:
        from plait.engine import GenerateRequest, SamplingParams

        await tiny_engine.complete(GenerateRequest(prompt="x", sampling=SamplingParams(max_tokens=1)))

    asyncio.run(one_request())  # submitted after set_policy: scheduled under it
    core = tiny_engine.core
    assert core.scheduler.policy == policy and core.policy == policy
    assert core.prefix_cache.pin_budget == int(0.5 * core.kv_slots)
    assert tiny_engine.effective_settings()["policy"] == policy.to_dict()
    tiny_engine.set_policy(PlanConfig().engine)
