"""Shared fixtures of the runtime tests: one tiny dummy-weights engine per session, and small async helpers.

The ``tiny`` shape has random weights and a byte-level tokenizer: outputs are meaningless but deterministic under
greedy decoding (and independent of batch-mates), and a token costs about a millisecond on CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.conftest import TINY


@pytest.fixture(scope="session")
def tiny_engine() -> Iterator:
    """One ``Engine`` on the tiny shape for every runtime test (each test uses its own ``Runtime`` on it)."""
    import torch

    from plait.engine import Engine, EngineConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny matrices gain nothing from intra-op threads
    engine = Engine(EngineConfig(**TINY))
    yield engine
    engine.close()
    torch.set_num_threads(threads)


async def wait_kv_free(engine, timeout: float = 5.0) -> None:
    """Poll until no request holds KV (aborts travel through the engine thread), then check the cache."""
    deadline = time.monotonic() + timeout
    while engine.core.kv_in_use() or engine.core.requests:
        assert time.monotonic() < deadline, f"KV still in use: {engine.core.kv_in_use()} slots"
        await asyncio.sleep(0.005)
    engine.core.check_invariants()  # safe: the engine thread is idle (blocked on its command queue)


async def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


def other_tasks() -> set[asyncio.Task]:
    """Every task of the running loop except the caller's own."""
    return asyncio.all_tasks() - {asyncio.current_task()}
