"""One configuration tree: every setting is defined in exactly one configuration class, and the server reaches the
engine through its public API only."""

from __future__ import annotations

import ast
import dataclasses
import itertools
from pathlib import Path

from plait.engine import EngineConfig, EnginePolicy
from plait.runtime.planning import PlanConfig
from plait.server import ServerConfig, TenantLimits

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_CLASSES = (EngineConfig, EnginePolicy, PlanConfig, ServerConfig, TenantLimits)
# Fields that hold another configuration class (the tree's edges), and display names: not settings.
EDGES = {"policy", "engine", "limits", "tenant_limits", "name"}


def _settings(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - EDGES


def test_no_setting_is_defined_in_two_configuration_classes() -> None:
    for first, second in itertools.combinations(CONFIG_CLASSES, 2):
        shared = _settings(first) & _settings(second)
        assert not shared, f"{first.__name__} and {second.__name__} both define {sorted(shared)}"


def test_the_plan_embeds_the_engine_policy_and_the_engine_config_holds_one() -> None:
    assert isinstance(PlanConfig().engine, EnginePolicy) and isinstance(EngineConfig().policy, EnginePolicy)
    # The engine starts with what plait serves with; the baseline is a request-level engine's policy.
    assert EngineConfig().policy == PlanConfig().engine == EnginePolicy()
    assert PlanConfig.baseline().engine == EnginePolicy.request_level()


def test_no_scheduler_config_copies_engine_settings() -> None:
    import plait.engine.scheduler as scheduler

    assert not hasattr(scheduler, "SchedulerConfig")


def test_no_server_module_reaches_into_the_engine_core() -> None:
    """``plait/server`` uses ``Engine``'s public API: no ``.core`` attribute, no import below ``plait.engine``."""
    problems = []
    for path in sorted((REPO_ROOT / "plait" / "server").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(REPO_ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "core":
                problems.append(f"{where}:{node.lineno} reads .core")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plait.engine."):
                problems.append(f"{where}:{node.lineno} imports {node.module}")
    assert problems == []
