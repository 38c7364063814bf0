"""One engine replica, in the process that holds it: the body of a Ray actor, or an in-process replica.

Everything crosses as plain data (requests, deltas, commands without futures, stats, ``PrefixKV``), so the same
class serves both backends. Commands whose answer the caller awaits (the resident prefix, KV export and import)
are methods that await the engine thread's result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from plait.engine import (
    Engine,
    EngineCommand,
    EngineConfig,
    EngineFeedback,
    EngineStats,
    ExportPrefix,
    GenerateDelta,
    GenerateRequest,
    ImportPrefix,
    PrefixKV,
    ResidentPrefix,
)
from plait.engine.engine_policy import EnginePolicy


class EngineReplica:
    """Replica ``index``: an ``Engine`` of ``config`` (its own step thread). ``threads``: the CPU threads torch may
    use in this process (a replica in its own process on a CPU machine; None leaves torch's default)."""

    def __init__(self, config: EngineConfig, index: int, threads: int | None = None) -> None:
        self.index = index
        if threads is not None and config.resolve_device().type == "cpu":
            import torch

            torch.set_num_threads(threads)
        self.engine = Engine(config)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        """The request's deltas, as ``Engine.generate`` streams them."""
        async for delta in self.engine.generate(request):
            yield delta

    def send(self, command: EngineCommand) -> None:
        self.engine.send(command)

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def set_policy(self, policy: EnginePolicy) -> None:
        self.engine.set_policy(policy)

    def feedback(self) -> EngineFeedback:
        return self.engine.feedback()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def effective_settings(self) -> dict[str, Any]:
        return {**self.engine.effective_settings(), "replica": self.index, "pid": os.getpid()}

    async def resident_prefix(self, token_ids: list[int]) -> int:
        command = ResidentPrefix(tuple(token_ids))
        self.engine.send(command)
        return await asyncio.wrap_future(command.result)

    async def export_prefix(self, token_ids: list[int]) -> PrefixKV:
        command = ExportPrefix(tuple(token_ids))
        self.engine.send(command)
        return await asyncio.wrap_future(command.result)

    async def import_prefix(self, kv: PrefixKV, program_id: str | None = None) -> int:
        command = ImportPrefix(kv, program_id)
        self.engine.send(command)
        return await asyncio.wrap_future(command.result)

    def close(self) -> None:
        self.engine.close()
