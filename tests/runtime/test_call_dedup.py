"""The call deduplicator against a scripted engine: a leader's stream runs to its own end (no abort for a finished
call), and a finished call is replayed as one delta holding its whole output."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from plait.engine import GenerateDelta, GenerateRequest, SamplingParams
from plait.runtime.planning.call_dedup import CallDeduplicator


class ScriptedEngine:
    """Streams three deltas per request and records whether each stream ended by itself or was closed early."""

    def __init__(self) -> None:
        self.completed: list[str] = []
        self.closed_early: list[str] = []

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        rid = request.request_id
        finished = False
        try:
            yield GenerateDelta(rid, 0, "SEL", [1], prompt_tokens=5, completion_tokens=1, queued_s=0.25)
            yield GenerateDelta(rid, 0, "ECT", [2], prompt_tokens=5, completion_tokens=2)
            yield GenerateDelta(rid, 0, " 1", [3], finish_reason="length", prompt_tokens=5, completion_tokens=3)
            finished = True
        finally:
            (self.completed if finished else self.closed_early).append(rid)


def _request(request_id: str) -> GenerateRequest:
    sampling = SamplingParams(temperature=0.0, max_tokens=3)
    return GenerateRequest(prompt="Question: how many?", sampling=sampling, request_id=request_id)


async def _collect(source: AsyncIterator[GenerateDelta]) -> list[GenerateDelta]:
    return [delta async for delta in source]


def test_a_finished_leader_ends_its_stream_and_is_replayed_as_one_delta():
    engine = ScriptedEngine()
    dedup = CallDeduplicator()

    async def main() -> tuple[list[GenerateDelta], list[GenerateDelta], bool]:
        source, shared = dedup.generate(engine, _request("first"))  # type: ignore[arg-type]
        first = await _collect(source)
        assert not shared
        again, replayed = dedup.generate(engine, _request("second"))  # type: ignore[arg-type]
        return first, await _collect(again), replayed

    first, second, replayed = asyncio.run(main())
    assert engine.completed == ["first"] and engine.closed_early == []  # no abort sent for a finished call
    assert [d.text for d in first] == ["SEL", "ECT", " 1"]
    assert replayed and len(second) == 1
    merged = second[0]
    assert merged.text == "SELECT 1" and merged.token_ids == [1, 2, 3]
    assert merged.finish_reason == "length" and merged.completion_tokens == 3 and merged.queued_s == 0.25
    assert dedup.calls == 2 and dedup.deduplicated == 1


def _follow_a_leader_that_leaves(run_another_first: bool) -> tuple[GenerateDelta, list[GenerateDelta], list[str]]:
    """A subscriber joins after the leader's first delta (it gets that as one merged delta), the leader leaves, and
    the subscriber re-issues the call: to the engine, or (``run_another_first``) to the replay of an identical call
    that ran to its end meanwhile."""
    engine = ScriptedEngine()
    dedup = CallDeduplicator()

    async def main() -> tuple[GenerateDelta, list[GenerateDelta]]:
        leader, _ = dedup.generate(engine, _request("leader"))  # type: ignore[arg-type]
        leading = aiter(leader)
        await anext(leading)
        follower, shared = dedup.generate(engine, _request("follower"))  # type: ignore[arg-type]
        assert shared
        following = aiter(follower)
        first = await anext(following)
        await leading.aclose()  # type: ignore[attr-defined]
        if run_another_first:
            await _collect(dedup.generate(engine, _request("other"))[0])  # type: ignore[arg-type]
        return first, [delta async for delta in following]

    first, rest = asyncio.run(main())
    return first, rest, engine.completed


def test_a_subscriber_whose_leader_leaves_gets_the_output_once():
    first, rest, completed = _follow_a_leader_that_leaves(run_another_first=False)
    assert first.text == "SEL" and first.token_ids == [1]
    assert [d.text for d in rest] == ["ECT", " 1"] and [t for d in rest for t in d.token_ids] == [2, 3]
    assert rest[-1].finish_reason == "length" and completed == ["follower"]


def test_a_subscriber_resuming_from_a_replay_gets_only_what_it_lacks():
    first, rest, completed = _follow_a_leader_that_leaves(run_another_first=True)
    assert completed == ["other"]  # the subscriber's re-issue found the finished call: no engine request
    assert first.text + "".join(d.text for d in rest) == "SELECT 1"
    assert first.token_ids + [t for d in rest for t in d.token_ids] == [1, 2, 3]
    assert rest[-1].finish_reason == "length" and rest[-1].completion_tokens == 3
