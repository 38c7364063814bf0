"""How the replica set reaches a replica: in this process, or in a Ray actor. Both give the same async calls.

A replica that is gone (its actor died or was killed) raises ``ReplicaLostError`` from every call, so the replica set
can fail its calls over to another replica. ``poll`` (stats and cache events) is a blocking call made from the replica
set's polling thread, never from an event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from plait.engine import (
    EngineCommand,
    EngineConfig,
    EngineFeedback,
    EngineStoppedError,
    GenerateDelta,
    GenerateRequest,
    PrefixKV,
)
from plait.engine.engine_policy import EnginePolicy
from plait.runtime.replicas.engine_replica import EngineReplica


class ReplicaLostError(RuntimeError):
    """The replica is gone (its process died, or it was stopped): its calls must run elsewhere."""

    def __init__(self, index: int, cause: object = None) -> None:
        super().__init__(f"replica {index} is gone" + (f": {cause}" if cause else ""))
        self.index = index


class ReplicaHandle(Protocol):
    index: int
    alive: bool

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]: ...
    def send(self, command: EngineCommand) -> None: ...
    def abort(self, request_id: str) -> None: ...
    def set_policy(self, policy: EnginePolicy) -> None: ...
    def poll(self) -> EngineFeedback: ...
    def effective_settings(self) -> dict[str, Any]: ...
    async def resident_prefix(self, token_ids: list[int]) -> int: ...
    async def export_prefix(self, token_ids: list[int]) -> PrefixKV: ...
    async def import_prefix(self, kv: PrefixKV, program_id: str | None = None) -> int: ...
    def close(self) -> None: ...


class LocalReplica:
    """A replica in this process."""

    def __init__(self, config: EngineConfig, index: int) -> None:
        self.index = index
        self.replica = EngineReplica(config, index)
        self.alive = True

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        self._check()
        try:
            async for delta in self.replica.generate(request):
                yield delta
        except EngineStoppedError as error:
            if not self.alive:  # stopped under the call: the replica is gone, not the request's fault
                raise ReplicaLostError(self.index, "stopped") from error
            raise

    def send(self, command: EngineCommand) -> None:
        if self.alive:
            self.replica.send(command)

    def abort(self, request_id: str) -> None:
        if self.alive:
            self.replica.abort(request_id)

    def set_policy(self, policy: EnginePolicy) -> None:
        self.replica.set_policy(policy)

    def poll(self) -> EngineFeedback:
        self._check()
        return self.replica.feedback()

    def effective_settings(self) -> dict[str, Any]:
        return self.replica.effective_settings()

    async def resident_prefix(self, token_ids: list[int]) -> int:
        self._check()
        return await self.replica.resident_prefix(token_ids)

    async def export_prefix(self, token_ids: list[int]) -> PrefixKV:
        self._check()
        return await self.replica.export_prefix(token_ids)

    async def import_prefix(self, kv: PrefixKV, program_id: str | None = None) -> int:
        self._check()
        return await self.replica.import_prefix(kv, program_id)

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.replica.close()

    def _check(self) -> None:
        if not self.alive:
            raise ReplicaLostError(self.index, "stopped")


class RayReplica:
    """A replica in a Ray actor (``EngineReplica`` as the actor's class), reached through its handle."""

    def __init__(self, actor: Any, index: int) -> None:
        self.actor = actor
        self.index = index
        self.alive = True

    @classmethod
    def start(cls, config: EngineConfig, index: int, num_gpus: float, num_cpus: float) -> RayReplica:
        import ray

        remote = ray.remote(EngineReplica).options(
            num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0, name=None, max_concurrency=1000
        )
        return cls(remote.remote(config, index, max(1, int(num_cpus))), index)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        try:
            stream = self.actor.generate.options(num_returns="streaming").remote(request)
            async for ref in stream:
                yield await ref
        except _ray_errors() as error:
            self.alive = False
            raise ReplicaLostError(self.index, error) from error

    def send(self, command: EngineCommand) -> None:
        if self.alive:
            self.actor.send.remote(command)

    def abort(self, request_id: str) -> None:
        if self.alive:
            self.actor.abort.remote(request_id)

    def set_policy(self, policy: EnginePolicy) -> None:
        self._get(self.actor.set_policy.remote(policy))

    def poll(self) -> EngineFeedback:
        return self._get(self.actor.feedback.remote())

    def effective_settings(self) -> dict[str, Any]:
        return self._get(self.actor.effective_settings.remote())

    async def resident_prefix(self, token_ids: list[int]) -> int:
        return await self._await(self.actor.resident_prefix.remote(token_ids))

    async def export_prefix(self, token_ids: list[int]) -> PrefixKV:
        return await self._await(self.actor.export_prefix.remote(token_ids))

    async def import_prefix(self, kv: PrefixKV, program_id: str | None = None) -> int:
        return await self._await(self.actor.import_prefix.remote(kv, program_id))

    def close(self) -> None:
        import ray

        if self.alive:
            self.alive = False
            with contextlib.suppress(Exception):  # already gone: nothing left to stop
                ray.get(self.actor.close.remote(), timeout=30)
            ray.kill(self.actor)

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=60)
        except _ray_errors() as error:
            self.alive = False
            raise ReplicaLostError(self.index, error) from error

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except _ray_errors() as error:
            self.alive = False
            raise ReplicaLostError(self.index, error) from error


def _ray_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return (RayActorError, ActorDiedError, ActorUnavailableError)
