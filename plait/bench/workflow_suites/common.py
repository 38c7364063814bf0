"""Building blocks every suite uses: seeded random streams, arrivals, forced output lengths, the shared data folder,
and the summary numbers added to a suite's parameters."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plait.bench.workflow_suites.estimates import PROFILE_COSTS, SizeEstimator
from plait.bench.workflow_suites.suite import SuiteOptions, SuiteProgram
from plait.semantic_vars import GenConstraints

_REPO_ROOT = Path(__file__).resolve().parents[3]


def rng_for(suite: str, options: SuiteOptions, purpose: str) -> random.Random:
    """An independent, reproducible stream per (suite, seed, purpose): changing how one purpose draws numbers does
    not shift the others. A ``str`` seed is hashed with SHA-512, so it is the same in every process."""
    return random.Random(f"{suite}:{options.seed}:{purpose}")


def forced_length(tokens: int) -> GenConstraints:
    """Greedy decoding of exactly ``tokens`` tokens: output lengths are part of the workload, not of the model."""
    return GenConstraints(max_tokens=tokens, ignore_eos=True, temperature=0.0)


def forced_text(text: str) -> GenConstraints:
    """Greedy decoding under a grammar that admits exactly ``text``: the output is the workload's, whatever the
    weights. Each token adds at least one byte, so the byte count bounds the tokens it takes."""
    return GenConstraints(max_tokens=len(text.encode()) + 4, temperature=0.0, choices=[text])


def literal(text: str) -> str:
    """``text`` escaped for use inside a template (a ``{{`` in data must not open a slot)."""
    return text.replace("{{", "\\{{")


def arrival_times(count: int, rate: float, rng: random.Random) -> list[float]:
    """Poisson arrivals at ``rate`` programs per second; the first program arrives at t=0 so a run never starts idle.
    ``rate == 0``: everything at t=0."""
    if count <= 0:
        return []
    if rate == 0:
        return [0.0] * count
    times = [0.0]
    for _ in range(count - 1):
        times.append(times[-1] + rng.expovariate(rate))
    return [round(t, 4) for t in times]


def resolve_data_dir(options: SuiteOptions) -> Path:
    """The shared data folder: ``options.data_dir``, else ``../shared/data`` beside the repo, else beside the cwd.
    The path may not exist; suites that need it raise ``SuiteDataMissing`` naming what they looked for."""
    if options.data_dir is not None:
        return Path(options.data_dir)
    beside_repo = _REPO_ROOT.parent / "shared" / "data"
    if beside_repo.is_dir():
        return beside_repo
    beside_cwd = Path.cwd().parent / "shared" / "data"
    return beside_cwd if beside_cwd.is_dir() else beside_repo


def pick(value: Any, default: Any) -> Any:
    """An option's value, or the suite's default when the option is ``None``."""
    return default if value is None else value


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile by linear interpolation (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """count / mean / p50 / p90 / max of ``values``, rounded."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), digits),
        "p50": round(percentile(values, 0.5), digits),
        "p90": round(percentile(values, 0.9), digits),
        "max": round(max(values), digits),
    }


def totals(programs: Sequence[SuiteProgram], profile: str, kv_slots: int, estimator: SizeEstimator) -> dict[str, Any]:
    """Generic size numbers of a built suite (estimates; see ``estimates``), for its parameters."""
    costs = PROFILE_COSTS[profile]
    workflows = [program.workflow for program in programs]
    prompt_tokens = [estimator.prompt_tokens(workflow, node) for workflow in workflows for node in workflow.llm_calls()]
    output_tokens = sum(estimator.output_tokens(node) for wf in workflows for node in wf.llm_calls())
    tool_seconds = [estimator.node_seconds(wf, node, costs) for wf in workflows for node in wf.tool_calls()]
    working_set = estimator.distinct_kv_tokens(workflows)
    return {
        "llm_calls": len(prompt_tokens),
        "tool_calls": len(tool_seconds),
        "prompt_tokens_est": sum(prompt_tokens),
        "prompt_tokens_per_call_est": summary(prompt_tokens, 1),
        "output_tokens": output_tokens,
        "tool_seconds": summary(tool_seconds),
        "tool_seconds_total": round(sum(tool_seconds), 3),
        "unloaded_program_seconds_est": summary([estimator.unloaded_seconds(wf, costs) for wf in workflows]),
        "working_set_tokens_est": working_set,
        "kv_slots_over_working_set": round(kv_slots / working_set, 3) if working_set else None,
        "last_arrival_s": max((program.arrival_s for program in programs), default=0.0),
    }
