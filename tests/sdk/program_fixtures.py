"""A program and its tools shared by the SDK tests and by ``plait run --tools`` in those tests."""

from __future__ import annotations

import plait


@plait.tool
def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


@plait.program
async def research(p: plait.Program, topic: str) -> dict:
    """Parallel calls, a tool, a loop that branches on generated values, and two selects."""
    facts = p.gen("Write one fact about {{topic}}.\nFact:", topic=topic, max_tokens=12, stop=["\n"], name="fact")
    question = p.gen(
        "Ask one question about {{topic}}.\nQuestion:", topic=topic, max_tokens=12, stop=["\n"], name="question"
    )
    words = p.tool(word_count, text=facts, name="count")
    summary = p.gen(
        "Fact: {{facts}}\nQuestion: {{question}}\nSummary:",
        facts=facts,
        question=question,
        max_tokens=10,
        name="summary",
    )
    longer = [summary]
    while (await words) + len(longer) < 14 and len(longer) < 3:  # branch on a tool result and loop
        longer.append(p.gen("Expand: {{text}}\nMore:", text=longer[-1], max_tokens=6, name="expand"))
    verdict = p.select(
        "Is this about {{topic}}? {{summary}}\nAnswer:",
        topic=topic,
        summary=summary,
        choices=[" yes", " no"],
        name="verdict",
    )
    scored = p.select(
        "{{topic}} is a", topic=topic, choices=[" fruit", " colour", " planet"], mode="score", name="kind"
    )
    return {
        "facts": facts,
        "summary": summary,
        "expansions": longer[1:],
        "verdict": verdict,
        "kind": scored,
        "words": words,
    }
