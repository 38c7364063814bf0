"""Engine replicas behind the one engine facade the planner, the executor and the API use (``Engine``'s methods).

- **Routing** (``replica_router.py``): each call goes to a replica chosen from its program's binding, the replicas'
  own cached prefixes for its prompt and their load. Program commands (pins, next-use hints, reservations,
  prefetch, forget) go to the replica the program is bound to; policy changes go to every replica.
- **Faults**: when a replica is lost mid-call, the call runs again on another replica and its stream goes on with
  no token repeated: a single greedy or unseeded sample continues from the tokens already sent (prompt + sent tokens
  as the new prompt); other calls (several samples, grammar constraints, seeded sampling, penalties) run again from
  the start and the tokens already sent are skipped (the same tokens for greedy and seeded sampling).
- **Migration** (``migrate``): a program moves to another replica with its KV: a running call stops on the source
  after the tokens it has sent, the KV of its prompt and those tokens is copied through host memory into the target's
  prefix cache, and the call continues there (a continuation computes only the last token); a program between calls
  moves the KV of its last call the same way. Its binding moves with it.
- **Stats and feedback**: a polling thread reads every replica's stats and cache events; ``stats()`` is their sum
  (the longest waits and steps are the maximum) and ``feedback()`` hands the planner every replica's events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from plait.engine import (
    EngineCommand,
    EngineConfig,
    EngineFeedback,
    EngineStats,
    EngineStoppedError,
    ForgetProgram,
    GenerateDelta,
    GenerateRequest,
    InvalidRequestError,
    SetPolicy,
)
from plait.engine.engine import complete_with, score_with
from plait.engine.engine_policy import EnginePolicy
from plait.engine.grammar import scoring_requests
from plait.engine.model_loader import resolve_model
from plait.engine.prompt_tokens import request_prompt_ids
from plait.engine.request import ChoiceScore, GenerateResult
from plait.engine.tokenizer_loader import load_tokenizer
from plait.runtime.replicas.replica_config import ReplicaConfig
from plait.runtime.replicas.replica_handles import LocalReplica, RayReplica, ReplicaHandle, ReplicaLostError
from plait.runtime.replicas.replica_router import ReplicaLoad, ReplicaRouter

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05  # how often the replicas' stats and cache events are read


def _with_prompt_ids(request: GenerateRequest, prompt_ids: list[int]) -> GenerateRequest:
    """``request`` with its prompt given as token ids (whatever form it had)."""
    return replace(request, prompt=None, messages=None, prompt_pieces=None, prompt_token_ids=list(prompt_ids))


@dataclass
class _Call:
    """A call in flight: where it runs, and what its stream has sent so far."""

    replica: int
    program_id: str | None
    prompt_ids: list[int]
    sent: dict[int, list[int]] = field(default_factory=dict)  # sample index -> tokens sent
    move_to: int | None = None  # set by ``migrate``: continue on this replica after the next delta
    # After a re-run from the start: per sample, how many tokens the caller already has (frozen at the re-run) and
    # how many of them the re-run has produced again so far; those are not sent twice.
    to_skip: dict[int, int] = field(default_factory=dict)
    replayed: dict[int, int] = field(default_factory=dict)


@dataclass
class Migration:
    """What moving a program cost: the KV tokens copied and the pause (seconds from stopping to the first token
    of the continuation, or to the import's end for a program between calls)."""

    program_id: str
    source: int
    target: int
    kv_tokens: int
    pause_s: float


class ReplicaSet:
    """``replicas`` engines of one ``EngineConfig``, used where an ``Engine`` is (``open_engine`` accepts it)."""

    def __init__(self, config: EngineConfig, replica_config: ReplicaConfig, handles: list[ReplicaHandle]) -> None:
        self._config = config
        self.replica_config = replica_config
        self.handles = handles
        self.router = ReplicaRouter(replica_config)
        source = resolve_model(config.model, config.weights)
        self._model_config = source.config
        self.tokenizer = load_tokenizer(source, config.tokenizer)
        self._replica_settings = [handle.effective_settings() for handle in handles]  # waits for each model
        self._settings = self._replica_settings[0]
        self._policy = config.policy
        self._calls: dict[str, _Call] = {}
        self._draining: set[int] = set()  # replicas being drained: no new call goes there
        self._last_tokens: dict[str, list[int]] = {}  # program -> its last call's prompt and output tokens
        self.migrations: list[Migration] = []
        self.failovers = 0
        self._stats: dict[int, EngineStats] = {}
        self._events: list[Any] = []
        self._events_dropped = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ray_owner: _RayOwner | None = None
        self._poller = threading.Thread(target=self._poll_loop, name="plait-replica-poll", daemon=True)
        self._poller.start()

    @classmethod
    def start(cls, config: EngineConfig, replica_config: ReplicaConfig) -> ReplicaSet:
        """Starts the replicas (Ray actors, or engines in this process) and waits until each has its model loaded."""
        config.validate()
        replica_config.validate()
        if config.tensor_parallel > 1 and replica_config.replicas > 1:
            raise InvalidRequestError(
                "tensor_parallel", "replicas of a tensor-parallel engine are not available yet: give one of them"
            )
        if replica_config.backend == "local":
            return cls(config, replica_config, [LocalReplica(config, i) for i in range(replica_config.replicas)])
        try:
            import ray
        except ImportError:
            raise InvalidRequestError(
                "replicas", "Ray is not installed: pip install 'plait[scale]' (or --replica-backend local)"
            ) from None
        owner = None if ray.is_initialized() else _RayOwner.start(replica_config.ray_address)
        # A GPU each while there are enough, else shares of them (small models); a CPU each likewise: a replica
        # asking for more than the cluster has would wait for it forever.
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
        num_gpus = min(1.0, gpus / replica_config.replicas) if gpus and config.resolve_device().type == "cuda" else 0
        num_cpus = min(1.0, cpus / replica_config.replicas)
        handles: list[ReplicaHandle] = [
            RayReplica.start(config, i, num_gpus=num_gpus, num_cpus=num_cpus) for i in range(replica_config.replicas)
        ]
        replica_set = cls(config, replica_config, handles)
        replica_set._ray_owner = owner
        return replica_set

    # ---- the engine facade -----------------------------------------------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def model_config(self) -> Any:
        return self._model_config

    @property
    def max_context(self) -> int:
        return int(self._settings["max_context"])

    @property
    def policy(self) -> EnginePolicy:
        return self._policy

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        return request_prompt_ids(request, self.tokenizer, self._model_config.vocab_size)

    def alive(self) -> list[int]:
        return [handle.index for handle in self.handles if handle.alive]

    def effective_settings(self) -> dict[str, Any]:
        return {
            **self._settings,
            "kv_slots": int(self._settings["kv_slots"]) * len(self.handles),
            "replicas": len(self.handles),
            "replicas_alive": len(self.alive()),
            "routing": self.replica_config.routing,
            "replica_backend": self.replica_config.backend,
            "policy": self._policy.to_dict(),
        }

    def set_policy(self, policy: EnginePolicy) -> None:
        self._policy = policy
        for handle in self._live_handles():
            handle.send(SetPolicy(policy))

    def send(self, command: EngineCommand) -> None:
        """A program's command goes to the replica its program is bound to; a policy to every replica; other
        commands (prefix hints) to every replica."""
        if isinstance(command, SetPolicy):
            self.set_policy(command.policy)
            return
        program_id = getattr(command, "program_id", None)
        if program_id is not None:
            index = self.router.bound(program_id, self.alive())
            if isinstance(command, ForgetProgram):
                self.router.forget(program_id)
                self._last_tokens.pop(program_id, None)
            if index is not None:
                self.handles[index].send(command)
            return
        for handle in self._live_handles():
            handle.send(command)

    def abort(self, request_id: str) -> None:
        call = self._calls.get(request_id)
        if call is not None:
            self.handles[call.replica].abort(request_id)

    def stats(self) -> EngineStats:
        with self._lock:
            stats = list(self._stats.values())
        return merge_stats(stats)

    def feedback(self) -> EngineFeedback:
        with self._lock:
            events, self._events = self._events, []
            dropped, self._events_dropped = self._events_dropped, 0
        return EngineFeedback(self.stats(), tuple(events), dropped)

    def replica_stats(self) -> dict[int, EngineStats]:
        """Each live replica's latest stats (for ``/server_info`` and the dashboard)."""
        with self._lock:
            return dict(self._stats)

    def describe_replicas(self) -> dict[str, Any]:
        """Per replica: alive, load, KV use, programs bound and stats; the routing's decisions, failovers and
        migrations (``/server_info`` and ``/metrics`` read it)."""
        stats = self.replica_stats()
        bound: dict[int, int] = {}
        for index in self.router.bindings.values():
            bound[index] = bound.get(index, 0) + 1
        replicas = []
        for handle in self.handles:
            load = ReplicaLoad.of(stats.get(handle.index))
            replicas.append(
                {
                    "index": handle.index,
                    "alive": handle.alive,
                    "pid": self._replica_settings[handle.index].get("pid"),
                    "waiting": load.waiting,
                    "running": load.running,
                    "kv_usage": load.kv_usage,
                    "bound_programs": bound.get(handle.index, 0),
                    "stats": dataclasses.asdict(stats[handle.index]) if handle.index in stats else None,
                }
            )
        return {
            "routing": self.replica_config.routing,
            "backend": self.replica_config.backend,
            "replicas": replicas,
            "decisions": dict(self.router.decisions),
            "failovers": self.failovers,
            "migrations": [dataclasses.asdict(m) for m in self.migrations[-100:]],
        }

    async def complete(self, request: GenerateRequest) -> GenerateResult:
        return await complete_with(self.generate, request)

    async def score_choices(self, request: GenerateRequest, choices: list[str]) -> list[ChoiceScore]:
        """As ``Engine.score_choices``; every choice runs on the replica the request's program is bound to."""
        scoring = scoring_requests(request, self.prompt_ids(request), choices, self.tokenizer)
        return await score_with(self.complete, scoring, choices)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        """The request's deltas, from the replica routing picks; a lost replica's call goes on on another (see the
        module doc), a migrated one on its target."""
        if self._closed.is_set():
            raise EngineStoppedError("the engine is closed")
        if request.request_id in self._calls:
            raise InvalidRequestError("request_id", f"'{request.request_id}' is already running")
        prompt_ids = request.prompt_token_ids or await asyncio.to_thread(self.prompt_ids, request)
        index = await self._route(request.program_id, prompt_ids)
        call = _Call(index, request.program_id, list(prompt_ids))
        self._calls[request.request_id] = call
        # The replica gets the ids tokenized here (the same tokenizer): the prompt is not tokenized twice.
        run = request if request.prompt_token_ids else _with_prompt_ids(request, prompt_ids)
        open_samples = request.sampling.n
        continued = False  # run is a continuation: its deltas' prompt counts include the tokens sent
        paused_at: float | None = None
        try:
            while True:
                handle = self.handles[call.replica]
                try:
                    stream = handle.generate(run)
                    async for delta in stream:
                        delta = self._adjust(delta, call, request, continued)
                        if delta is None:
                            continue
                        if paused_at is not None:
                            self.migrations[-1].pause_s = time.perf_counter() - paused_at
                            paused_at = None
                        call.sent.setdefault(delta.index, []).extend(delta.token_ids)
                        if delta.finish_reason is not None:
                            open_samples -= 1
                            if open_samples == 0:  # before the yield: a caller may stop at the last delta
                                self._remember(call, request)
                        yield delta
                        if open_samples == 0:
                            return
                        if call.move_to is not None and call.move_to != call.replica:
                            break
                    else:
                        raise EngineStoppedError("the replica's stream ended before the request finished")
                except ReplicaLostError as error:
                    self._lose(error.index)
                    self.failovers += 1
                    call.replica = await self._route(request.program_id, prompt_ids, exclude=error.index)
                    run, continued = self._resume_request(request, call)
                    continue
                # A migration: stop here after the tokens sent, move the KV, continue on the target.
                paused_at = time.perf_counter()
                source, target = call.replica, call.move_to
                assert target is not None
                handle.abort(run.request_id)
                kv_tokens = await self._copy_kv(source, target, call.prompt_ids + call.sent.get(0, []), call.program_id)
                self.migrations.append(Migration(call.program_id or "", source, target, kv_tokens, 0.0))
                call.replica, call.move_to = target, None
                if call.program_id is not None:
                    self.router.rebind(call.program_id, target)
                run, continued = self._resume_request(request, call)
        finally:
            self._calls.pop(request.request_id, None)
            if open_samples > 0:
                self.handles[call.replica].abort(run.request_id)

    async def migrate(self, program_id: str, target: int) -> int | None:
        """Moves ``program_id`` to replica ``target``, KV included (see the module doc); returns the replica it was
        on (None: it had no KV on any; it is bound to ``target`` now). Its running calls continue there after their
        next token; a program between calls has its last call's KV copied now."""
        if target not in self.alive():
            raise InvalidRequestError("target", f"replica {target} is not alive (alive: {self.alive()})")
        running = [call for call in self._calls.values() if call.program_id == program_id]
        if running:
            for call in running:
                call.move_to = target
            return running[0].replica
        source = self.router.bound(program_id, self.alive())
        if source is None:  # no KV anywhere (no call ran yet, or all were answered by dedup): its calls go there
            self.router.rebind(program_id, target)
            return None
        if source != target:
            started = time.perf_counter()
            kv_tokens = await self._copy_kv(source, target, self._last_tokens.get(program_id, []), program_id)
            self.router.rebind(program_id, target)
            self.migrations.append(Migration(program_id, source, target, kv_tokens, time.perf_counter() - started))
        return source

    async def drain(self, index: int, timeout_s: float = 60.0) -> list[Migration]:
        """Moves everything off replica ``index`` and stops it: running calls continue on the other replicas (with
        their KV), programs between calls move with their KV, new calls go elsewhere. Returns the migrations."""
        if index not in self.alive():
            raise InvalidRequestError("replica", f"replica {index} is not alive (alive: {self.alive()})")
        if len(self.alive()) < 2:
            raise InvalidRequestError("replica", "the last live replica cannot be drained")
        self._draining.add(index)
        first = len(self.migrations)
        with self._lock:
            loads = {i: ReplicaLoad.of(self._stats.get(i)) for i in self.alive() if i != index}
        target = min(loads, key=lambda i: (loads[i].key, i))
        for call in self._calls.values():
            if call.replica == index:
                call.move_to = target
        for program in [p for p, bound in self.router.bindings.items() if bound == index]:
            if not any(call.program_id == program for call in self._calls.values()):
                await self.migrate(program, target)
        deadline = time.monotonic() + timeout_s
        while any(call.replica == index for call in self._calls.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.handles[index].close()
        self._lose(index)
        return self.migrations[first:]

    def close(self) -> None:
        """Stops every replica (and the Ray instance this set started)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for handle in self.handles:
            try:
                handle.close()
            except Exception:  # a replica already gone: nothing to stop
                logger.debug("closing replica %s failed", handle.index, exc_info=True)
        self._poller.join(timeout=5)
        if self._ray_owner is not None:
            self._ray_owner.stop()

    # ---- internals -------------------------------------------------------------------------------------------------

    def _live_handles(self) -> list[ReplicaHandle]:
        return [handle for handle in self.handles if handle.alive]

    async def _route(self, program_id: str | None, prompt_ids: list[int], exclude: int | None = None) -> int:
        alive = [i for i in self.alive() if i != exclude and i not in self._draining]
        if not alive:
            raise EngineStoppedError("no engine replica is alive")
        lengths = None
        if self.router.needs_prefix_lengths(program_id, alive):
            answers = await asyncio.gather(
                *(self.handles[i].resident_prefix(prompt_ids) for i in alive), return_exceptions=True
            )
            lengths = {i: a for i, a in zip(alive, answers, strict=True) if isinstance(a, int)}
        with self._lock:
            loads = {i: ReplicaLoad.of(self._stats.get(i)) for i in alive}
        return self.router.choose(program_id, alive, loads, lengths)

    def _adjust(
        self, delta: GenerateDelta, call: _Call, request: GenerateRequest, continued: bool
    ) -> GenerateDelta | None:
        """The delta as the caller sees it: its request id and prompt count, and, after a re-run from the start,
        without the tokens the caller already has (None when nothing is left of it)."""
        changes: dict[str, Any] = {}
        if delta.request_id != request.request_id:
            changes["request_id"] = request.request_id
        if continued:
            changes["prompt_tokens"] = len(call.prompt_ids)
            changes["completion_tokens"] = delta.completion_tokens + len(call.sent.get(delta.index, []))
            changes["cached_tokens"] = min(delta.cached_tokens, len(call.prompt_ids))
        done = call.replayed.get(delta.index, 0)
        remaining = call.to_skip.get(delta.index, 0) - done
        if remaining > 0:
            take = min(remaining, len(delta.token_ids))
            call.replayed[delta.index] = done + take
            if take == len(delta.token_ids) and delta.finish_reason is None:
                return None
            tail = delta.token_ids[take:]
            changes["token_ids"] = tail
            changes["text"] = self.tokenizer.decode(tail) if tail else ""
            if delta.logprobs:
                changes["logprobs"] = delta.logprobs[take:]
        return replace(delta, **changes) if changes else delta

    def _resume_request(self, request: GenerateRequest, call: _Call) -> tuple[GenerateRequest, bool]:
        """The request that goes on from what ``call`` has sent: a continuation, or the request again (the tokens
        already sent are then skipped)."""
        run_id = f"{request.request_id}@{call.replica}.{self.failovers + len(self.migrations)}"
        call.replayed = {}
        call.to_skip = {}
        sampling = request.sampling
        sent = call.sent.get(0, [])
        can_continue = (
            sampling.n == 1
            and not sampling.constrained
            and sampling.presence_penalty == 0
            and sampling.frequency_penalty == 0
            and (sampling.temperature == 0 or sampling.seed is None)
            and sampling.prompt_logprobs_start is None
        )
        if can_continue and sent:
            resumed = replace(
                _with_prompt_ids(request, call.prompt_ids + sent),
                sampling=replace(sampling, max_tokens=max(1, sampling.max_tokens - len(sent))),
                request_id=run_id,
            )
            return resumed, True
        call.to_skip = {index: len(tokens) for index, tokens in call.sent.items()}
        return replace(_with_prompt_ids(request, call.prompt_ids), request_id=run_id), False

    async def _copy_kv(self, source: int, target: int, token_ids: list[int], program_id: str | None) -> int:
        """Copies the KV of ``token_ids``'s longest prefix cached on ``source`` into ``target``'s cache."""
        if not token_ids:
            return 0
        try:
            kv = await self.handles[source].export_prefix(token_ids)
            return await self.handles[target].import_prefix(kv, program_id) if len(kv) else 0
        except ReplicaLostError as error:
            logger.warning("copying KV from replica %s to %s failed: %s", source, target, error)
            self._lose(error.index)
            return 0

    def _remember(self, call: _Call, request: GenerateRequest) -> None:
        if call.program_id is not None and request.sampling.n == 1:
            self._last_tokens[call.program_id] = call.prompt_ids + call.sent.get(0, [])

    def _lose(self, index: int) -> None:
        handle = self.handles[index]
        if handle.alive or index in self._stats:
            logger.warning("engine replica %s is gone; its programs move to the others", index)
        handle.alive = False
        for program in self.router.lose(index):
            self._last_tokens.pop(program, None)
        with self._lock:
            self._stats.pop(index, None)

    def _poll_loop(self) -> None:
        while not self._closed.wait(POLL_INTERVAL_S):
            for handle in self._live_handles():
                try:
                    feedback = handle.poll()
                except ReplicaLostError:
                    self._lose(handle.index)
                    continue
                except Exception:  # a slow or failing poll must not stop the others
                    logger.debug("polling replica %s failed", handle.index, exc_info=True)
                    continue
                with self._lock:
                    self._stats[handle.index] = feedback.stats
                    self._events.extend(feedback.cache_events)
                    self._events_dropped += feedback.events_dropped


class _RayOwner:
    """The thread that connects this process to Ray (``ray.init``) and stays until the replica set closes.

    Ray's own processes (a local Ray's GCS and raylet) are killed when the thread that started them exits (they are
    started with a parent-death signal), so a server that loads its engine in a passing thread must not start Ray
    there. A local Ray is started when there is no address, and shut down by ``stop``."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="plait-ray", daemon=True)

    @classmethod
    def start(cls, address: str | None) -> _RayOwner:
        owner = cls(address)
        owner.thread.start()
        owner.ready.wait()
        if owner.error is not None:
            raise owner.error
        return owner

    def _run(self) -> None:
        import ray

        try:
            ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False)
        except BaseException as error:  # reported to the caller of start
            self.error = error
            self.ready.set()
            return
        self.ready.set()
        self.done.wait()
        ray.shutdown()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)


_MAX_FIELDS = ("longest_queue_wait_s", "longest_step_s")


def merge_stats(stats: list[EngineStats]) -> EngineStats:
    """The replicas' stats as one engine's: counts and times summed, the longest waits and steps the maximum, the
    fitted per-token costs averaged over the replicas that have them, per-key dictionaries summed."""
    if not stats:
        return EngineStats(0, 0, 0, 0, 0.0, 0.0, 0, 0, 0, 0)
    merged: dict[str, Any] = {}
    for f in fields(EngineStats):
        values = [getattr(s, f.name) for s in stats]
        if f.name in _MAX_FIELDS:
            merged[f.name] = max(values)
        elif isinstance(values[0], dict):
            total: dict[str, Any] = {}
            for value in values:
                for key, amount in value.items():
                    total[key] = total.get(key, 0) + amount
            merged[f.name] = total
        elif "None" in str(f.type):  # a fitted value some replicas have not learned yet
            present = [v for v in values if v is not None]
            merged[f.name] = sum(present) / len(present) if present else None
        else:
            merged[f.name] = sum(values)
    return dataclasses.replace(stats[0], **merged)
