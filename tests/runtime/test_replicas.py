"""Scale-out: routing, failover and migration of engine replicas (in-process replicas; Ray in test_replicas_served)."""

from __future__ import annotations

import asyncio

import pytest

from plait.engine import EngineConfig, EngineStats, GenerateRequest, InvalidRequestError, Pin, SamplingParams
from plait.runtime.replicas import ReplicaConfig, ReplicaLoad, ReplicaRouter, ReplicaSet, merge_stats
from tests.conftest import TINY

PROMPT = "a long enough prompt that the cache holds several blocks of it; " * 3


def _request(request_id: str, program: str | None, **sampling) -> GenerateRequest:
    params = {"max_tokens": 24, "temperature": 0.0, **sampling}
    return GenerateRequest(prompt=PROMPT, sampling=SamplingParams(**params), request_id=request_id, program_id=program)


@pytest.fixture
def replicas():
    replica_set = ReplicaSet.start(EngineConfig(**TINY), ReplicaConfig(replicas=2, backend="local"))
    yield replica_set
    replica_set.close()


async def _collect(stream, on_delta=None) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    count = 0
    async for delta in stream:
        tokens.setdefault(delta.index, []).extend(delta.token_ids)
        count += 1
        if on_delta is not None:
            await on_delta(count)
    return tokens


# ---- routing ---------------------------------------------------------------------------------------------------------


def test_a_bound_program_stays_where_its_kv_is_whatever_the_load():
    router = ReplicaRouter(ReplicaConfig(replicas=2))
    busy = {0: ReplicaLoad(waiting=100, running=50, kv_usage=0.99), 1: ReplicaLoad()}
    assert router.choose("p", [0, 1], {0: ReplicaLoad(), 1: ReplicaLoad(running=3)}) == 0  # least loaded
    assert router.choose("p", [0, 1], busy, {0: 300, 1: 0}) == 0  # bound: its KV is on 0
    assert router.choose("p", [0, 1], busy, {0: 300, 1: 300}) == 0  # as much there as anywhere: stays
    assert router.choose("p", [0, 1], busy, {0: 0, 1: 40}) == 1  # its KV is gone from 0: placed as a new one
    router.rebind("p", 0)
    assert router.choose("q", [0, 1], busy, {0: 500, 1: 0}) == 1  # unbound: 0 is over the load guard
    assert router.choose("r", [0, 1], {0: ReplicaLoad(), 1: ReplicaLoad()}, {0: 10, 1: 300}) == 1  # longest prefix
    assert router.lose(0) == ["p"]
    assert router.choose("p", [1], busy) == 1
    assert router.decisions["bound"] == 2 and router.decisions["prefix"] == 2


def test_a_shared_prefix_does_not_pile_every_program_onto_one_replica():
    """Every prompt starts with the same system prompt, cached on replica 0 first: new programs follow it only while
    replica 0 holds at most a quarter (at least one) more programs than the least loaded replica."""
    router = ReplicaRouter(ReplicaConfig(replicas=2))
    placed = [router.choose(f"p{i}", [0, 1], {}, {0: 900, 1: 0 if i < 3 else 900}) for i in range(12)]
    assert placed[:3] == [0, 0, 1]  # the third: replica 0 would be two ahead, so the other one, cached or not
    assert abs(placed.count(0) - placed.count(1)) <= 2, placed
    router.forget("p0")
    router.forget("p2")
    assert router.choose("late", [0, 1], {}, {0: 900, 1: 900}) == 0  # room again on 0: ties go to fewer programs


def test_prefix_and_round_robin_policies_ignore_bindings():
    prefix = ReplicaRouter(ReplicaConfig(replicas=2, routing="prefix"))
    prefix.choose("p", [0, 1], {}, {0: 0, 1: 0})
    assert prefix.needs_prefix_lengths("p", [0, 1])
    assert prefix.choose("p", [0, 1], {}, {0: 0, 1: 64}) == 1
    turns = ReplicaRouter(ReplicaConfig(replicas=3, routing="round-robin"))
    assert [turns.choose("p", [0, 1, 2], {}) for _ in range(4)] == [0, 1, 2, 0]


def test_bad_settings_name_the_field():
    for config, field in [
        (ReplicaConfig(replicas=0), "replicas"),
        (ReplicaConfig(routing="random"), "routing"),
        (ReplicaConfig(backend="k8s"), "backend"),
        (ReplicaConfig(backend="local", ray_address="ray://x:1"), "ray_address"),
        (ReplicaConfig(max_kv_usage=0), "max_kv_usage"),
    ]:
        with pytest.raises(InvalidRequestError) as raised:
            config.validate()
        assert raised.value.field == field


def test_replicas_of_a_tensor_parallel_engine_are_refused():
    with pytest.raises(InvalidRequestError) as raised:
        ReplicaSet.start(EngineConfig(**TINY, tensor_parallel=2), ReplicaConfig(replicas=2, backend="local"))
    assert raised.value.field == "tensor_parallel"


def test_stats_merge_sums_counts_and_keeps_the_longest_waits():
    a = EngineStats(1, 2, 10, 100, 5.0, 1.0, 7, 3, 0, 4, longest_queue_wait_s=2.0, admission_stops={"fit": 1})
    b = EngineStats(3, 0, 30, 100, 1.0, 1.0, 1, 1, 1, 6, longest_queue_wait_s=0.5, admission_stops={"fit": 2})
    merged = merge_stats([a, b])
    assert (merged.waiting, merged.kv_slots_used, merged.kv_slots_total, merged.steps) == (4, 40, 200, 10)
    assert merged.longest_queue_wait_s == 2.0 and merged.admission_stops == {"fit": 3}


# ---- replicas in this process ----------------------------------------------------------------------------------------


def test_program_calls_and_commands_go_to_the_bound_replica(replicas):
    async def main() -> None:
        first = await _collect(replicas.generate(_request("a", "p1")))
        bound = replicas.router.bindings["p1"]
        again = await _collect(replicas.generate(_request("b", "p1")))
        assert again == first and replicas.router.bindings["p1"] == bound
        assert replicas.router.decisions["bound"] == 1
        replicas.send(Pin(ttl_s=30.0, program_id="p1"))
        await asyncio.sleep(0.3)  # the poller reads the replicas' stats
        stats = replicas.replica_stats()
        assert stats[bound].pinned_slots > 0 and stats[1 - bound].pinned_slots == 0

    asyncio.run(main())


@pytest.mark.parametrize("moment", ["mid-call", "between calls"])
def test_a_migrated_program_gives_the_unmigrated_output_and_takes_its_kv(replicas, moment):
    async def main() -> None:
        reference = await _collect(replicas.generate(_request("ref", "ref")))
        if moment == "between calls":
            await _collect(replicas.generate(_request("warm", "p")))
        source = replicas.router.bindings.get("p", 0)
        target = 1 - source
        before = replicas.replica_stats().get(target)
        cached_before = before.cached_prefix_tokens if before else 0

        async def move(count: int) -> None:
            if count == 5 and moment == "mid-call":
                await replicas.migrate("p", target)

        if moment == "between calls":
            await replicas.migrate("p", target)
        moved = await _collect(replicas.generate(_request("moved", "p")), move)
        assert moved == reference  # no token lost, none repeated
        assert replicas.router.bindings["p"] == target
        migration = replicas.migrations[-1]
        assert (migration.source, migration.target) == (source, target)
        prompt_tokens = len(replicas.prompt_ids(_request("x", None)))
        assert migration.kv_tokens >= prompt_tokens
        await asyncio.sleep(0.3)
        # The target computed (almost) nothing of what was copied: the continuation or next call found it cached.
        hit = replicas.replica_stats()[target].cached_prefix_tokens - cached_before
        assert hit >= (migration.kv_tokens if moment == "mid-call" else prompt_tokens) - 1

    asyncio.run(main())


@pytest.mark.parametrize(
    "sampling",
    [{}, {"temperature": 1.0}, {"temperature": 0.9, "seed": 5, "n": 2}],
    ids=["greedy: continued", "sampled: continued", "seeded n=2: run again, sent tokens skipped"],
)
def test_a_lost_replicas_call_goes_on_elsewhere_without_repeats(replicas, sampling):
    async def main() -> None:
        reference = await _collect(replicas.generate(_request("ref", "ref", **sampling)))

        async def lose(count: int) -> None:
            if count == 4:
                replicas.handles[replicas.router.bindings["p"]].close()

        survived = await _collect(replicas.generate(_request("lost", "p", **sampling)), lose)
        assert replicas.failovers == 1 and len(replicas.alive()) == 1
        assert {i: len(t) for i, t in survived.items()} == {i: 24 for i in reference}
        if sampling.get("temperature", 0.0) == 0.0 or "seed" in sampling:
            assert survived == reference
        after = await _collect(replicas.generate(_request("after", "p", **sampling)))
        assert {i: len(t) for i, t in after.items()} == {i: 24 for i in reference}

    asyncio.run(main())


def test_migrating_to_a_replica_that_is_not_there_is_refused(replicas):
    async def main() -> None:
        await _collect(replicas.generate(_request("a", "p")))
        with pytest.raises(InvalidRequestError, match="not alive"):
            await replicas.migrate("p", 7)
        assert await replicas.migrate("nobody", 1) is None  # no KV anywhere: its calls will go to 1
        assert replicas.router.bindings["nobody"] == 1

    asyncio.run(main())


def test_draining_a_replica_moves_its_calls_and_programs_then_stops_it(replicas):
    async def main() -> None:
        reference = await _collect(replicas.generate(_request("ref", "ref")))
        await _collect(replicas.generate(_request("idle", "idle")))  # a program between calls
        draining: list = []

        async def drain(count: int) -> None:  # from another task, as an operator's request would
            if count == 3:
                index = replicas.router.bindings["busy"]
                draining.append((index, asyncio.create_task(replicas.drain(index))))

        busy = await _collect(replicas.generate(_request("busy", "busy")), drain)
        assert busy == reference  # the running call went on elsewhere, nothing lost or repeated
        index, task = draining[0]
        migrations = await asyncio.wait_for(task, 10)
        assert replicas.alive() == [1 - index] and not replicas.handles[index].alive
        assert all(m.target == 1 - index for m in migrations) and migrations
        assert set(replicas.router.bindings.values()) == {1 - index}
        again = await _collect(replicas.generate(_request("after", "idle")))
        assert again == reference
        with pytest.raises(InvalidRequestError, match="last live replica"):
            await replicas.drain(1 - index)

    asyncio.run(main())
