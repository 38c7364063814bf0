"""An agent session's over-long prompts are cut to fit without becoming the same text, and keep a shared head."""

from __future__ import annotations

import itertools

from plait.bench.replay.agent_programs import cap_prompts
from plait.bench.replay.records import AgentCall, AgentSession


def shared_head(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def count_words(text: str) -> int:
    return len(text.split())


def looping_session() -> AgentSession:
    """A session whose prompts grow by the same observation each turn (an agent stuck in a loop): the newest
    characters of two long prompts are identical."""
    system = " ".join(f"rule{i}" for i in range(50))
    observation = " ".join(f"line{i}" for i in range(30))
    prompts = [system]
    for turn in range(12):
        prompts.append(f"{prompts[-1]} step{turn % 2} {observation}")
    calls = tuple(AgentCall(float(i), text, "ok") for i, text in enumerate(prompts))
    return AgentSession("looping", 0.0, calls, "agents/looping.jsonl")


def test_prompts_that_fit_are_unchanged():
    session = looping_session()
    prompts, cut = cap_prompts(session, count_words, 10_000)
    assert not cut
    assert prompts == [call.input_text for call in session.calls]


def test_cut_prompts_fit_stay_distinct_and_share_a_head():
    session = looping_session()
    budget = 200
    prompts, cut = cap_prompts(session, count_words, budget)
    originals = [call.input_text for call in session.calls]
    assert cut
    assert all(count_words(prompt) <= budget for prompt in prompts)
    assert len(set(prompts)) == len(prompts), "two cut prompts became the same text"
    long_ones = [i for i, text in enumerate(originals) if count_words(text) > budget]
    assert len(long_ones) >= 3
    for i, prompt in enumerate(prompts):
        if i not in long_ones:
            assert prompt == originals[i]
    heads = [shared_head(prompts[i], prompts[j]) for i, j in itertools.pairwise(long_ones)]
    assert min(heads) >= len(originals[0])  # prefix sharing across turns survives: at least the system prompt
    for i in long_ones:
        assert originals[i].endswith(prompts[i].rsplit("omitted ...]\n", 1)[1])  # the newest tail is kept
