"""Real agent frameworks, unchanged except their base URL, against a real ``plait serve`` (the default model, on
127.0.0.1): a LangGraph prebuilt ReAct agent with two Python tools, the OpenAI client's Responses API with a function
tool and ``previous_response_id``, and LangChain's ``with_structured_output`` (json_schema).

For each: no response is a 4xx or 5xx; the agent's calls are one program of the server (every response names the same
``X-Plait-Program-Id``, and exactly that program is new in ``GET /v1/programs``) whose call count is the number of
LLM calls the framework made, whose gaps name the tools the replies called and show as ``tool`` spans in its
timeline; and the conversation's KV stays resident across each gap (on an idle server nothing evicts it): a call
after a gap finds at least 90% of the previous call's prompt in the cache.

The default model (SmolLM2-135M) is small: its tool calls and JSON are grammar-constrained, so well-formed, but its
choices are not smart. The agents are built so that they end regardless: a turn that must call a tool says so
(``tool_choice``), and LangGraph's loop is bounded by ``recursion_limit``, at which the prebuilt agent stops on its own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import httpx
import pytest

NEEDS_EXTRA = "needs the `frameworks` extra: pip install -e '.[frameworks]'"
pytest.importorskip("langgraph", reason=NEEDS_EXTRA)
pytest.importorskip("langchain_openai", reason=NEEDS_EXTRA)
pytest.importorskip("langchain_core", reason=NEEDS_EXTRA)
pytest.importorskip("openai", reason=NEEDS_EXTRA)

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from langgraph.prebuilt import create_react_agent  # noqa: E402
from openai import OpenAI  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from tests.served_process import DEFAULT_MODEL_ARGS, Served, serve  # noqa: E402

API_KEY = "frameworks-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
PROGRAM_HEADER = "X-Plait-Program-Id"
RESIDENT_FRACTION = 0.9  # of the previous call's prompt, found cached by the call after a gap

City = Literal["paris", "tokyo"]


@pytest.fixture(scope="module")
def server(default_gguf: Any) -> Iterator[Served]:
    """``plait serve`` on the default model (skipped, with the reason, when its wheel is not installed)."""
    with serve(api_key=API_KEY, model_args=DEFAULT_MODEL_ARGS) as served:
        yield served


@dataclass
class Exchanges:
    """What the server answered a framework's HTTP client: (method path, status, program id) per response."""

    seen: list[tuple[str, int, str | None]] = field(default_factory=list)

    def client(self) -> httpx.Client:
        """An ``httpx.Client`` to hand to the framework, recording every response."""

        def record(response: httpx.Response) -> None:
            request = f"{response.request.method} {response.request.url.path}"
            self.seen.append((request, response.status_code, response.headers.get(PROGRAM_HEADER)))

        return httpx.Client(event_hooks={"response": [record]}, timeout=300)

    def the_program(self) -> str:
        """The one program every response named; fails on a 4xx/5xx or on responses naming different programs."""
        assert self.seen, "the framework sent nothing"
        errors = [exchange for exchange in self.seen if exchange[1] >= 400]
        assert not errors, f"the server answered errors: {errors}"
        ids = {program_id for _, _, program_id in self.seen}
        assert len(ids) == 1 and None not in ids, f"the calls were not one program: {self.seen}"
        return ids.pop()


def _program_ids(served: Served) -> set[str]:
    response = httpx.get(f"{served.url}/v1/programs", headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    return {row["id"] for row in response.json()["data"]}


def _check_program(
    served: Served, before: set[str], program_id: str, *, origin: str, calls: int, gap_tools: list[set[str]]
) -> dict[str, Any]:
    """The agent made exactly one new program, ``program_id``, of ``calls`` calls; the gap before call ``i + 1``
    is named after the functions ``gap_tools[i]`` (``{"think"}``: a reply without tool calls) and shows as a ``tool``
    span in the timeline; and each call after a gap found the previous call's prompt still cached."""
    assert _program_ids(served) - before == {program_id}
    response = httpx.get(f"{served.url}/v1/programs/{program_id}", headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    program = response.json()
    detail = program["calls_detail"]
    assert (program["origin"], program["calls"], len(detail)) == (origin, calls, calls), program
    assert all(call["status"] == 200 for call in detail), detail
    assert [set(call["gap_tool"].split("+")) for call in detail[1:]] == gap_tools, detail
    tool_gaps = sum(tools != {"think"} for tools in gap_tools)
    assert program["tool_gaps"] >= tool_gaps, program
    gaps = {event["node"]: event for event in program["timeline"] if event["kind"] == "tool"}
    for i in range(calls - 1):  # each gap between two calls is a closed span between their runs
        gap = gaps[f"gap_{i}"]
        assert 0 <= gap["start_s"] <= gap["end_s"], program["timeline"]
    for previous, call in pairwise(detail):
        assert call["cached_tokens"] >= RESIDENT_FRACTION * previous["prompt_tokens"], (previous, call)
    return program


# ---- (a) LangGraph: the prebuilt ReAct agent with two Python tools ---------------------------------------------------


@pytest.mark.parametrize(
    "later_tool_choice", ["required", "auto"], ids=["tool-every-turn", "tool-first-turn-then-auto"]
)
def test_langgraph_react_agent_with_two_tools_is_one_program(server: Served, later_tool_choice: str) -> None:
    used: Counter[str] = Counter()

    @tool
    def get_weather(city: City) -> str:
        """The current weather in a city."""
        used["get_weather"] += 1
        return f"Sunny, 21 C in {city}."

    @tool
    def get_time(city: City) -> str:
        """The local time in a city."""
        used["get_time"] += 1
        return f"14:05 in {city}."

    exchanges = Exchanges()
    llm = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=API_KEY,
        model="default",
        temperature=0,
        max_tokens=80,
        max_retries=0,
        http_client=exchanges.client(),
    )
    tools = [get_weather, get_time]

    def model(state: dict[str, Any], runtime: Any) -> Any:
        """The first turn must call a tool (the small model might answer at once); later turns keep that
        (``required``) or fall back to the agent's own default (``auto``), as agents that force a first tool do."""
        answered = any(isinstance(message, ToolMessage) for message in state["messages"])
        return llm.bind_tools(tools, tool_choice=later_tool_choice if answered else "required")

    # The loop ends when the prebuilt agent runs out of steps, if the model has not answered before: with
    # recursion_limit=4 that is agent -> tools -> agent, whose reply ends the run.
    agent = create_react_agent(model, tools)
    before = _program_ids(server)
    result = agent.invoke(
        {"messages": [HumanMessage("What is the weather and the local time in Paris?")]}, {"recursion_limit": 4}
    )

    messages = result["messages"]
    assert isinstance(messages[-1], AIMessage)  # the agent returned
    replies = [message for message in messages if isinstance(message, AIMessage)]
    results = [message for message in messages if isinstance(message, ToolMessage)]
    assert used["get_weather"] >= 1 and used["get_time"] >= 1, used
    assert len(results) == sum(used.values())
    llm_calls = sum(request == "POST /v1/chat/completions" for request, _, _ in exchanges.seen)
    assert llm_calls == len(replies) == 2
    first_call_tools = {call["name"] for call in replies[0].tool_calls}
    program_id = exchanges.the_program()
    _check_program(server, before, program_id, origin="implicit", calls=llm_calls, gap_tools=[first_call_tools])


# ---- (b) the OpenAI client's Responses API: a function tool and previous_response_id ---------------------------------


def _has_route(served: Served, path: str) -> bool:
    response = httpx.get(f"{served.url}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    return path in response.json()["paths"]


def test_responses_api_chain_with_a_function_tool_is_one_program(server: Served) -> None:
    if not _has_route(server, "/v1/responses"):
        pytest.skip("this server has no POST /v1/responses (the Responses API)")
    used: Counter[str] = Counter()

    def get_weather(city: str) -> str:
        used[city] += 1
        return f"Sunny, 21 C in {city}."

    weather_tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "tokyo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
    exchanges = Exchanges()
    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, http_client=exchanges.client())
    before = _program_ids(server)
    # An agent loop of two turns: each turn's function calls run here and their outputs go back in the next turn,
    # chained to the previous response by its id (the server keeps the conversation).
    response = client.responses.create(
        model="default",
        input="What is the weather in Paris?",
        tools=[weather_tool],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=48,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and {call.name for call in calls} == {"get_weather"}, response.output
    outputs = [
        {"type": "function_call_output", "call_id": call.call_id, "output": get_weather(**json.loads(call.arguments))}
        for call in calls
    ]
    follow_up = client.responses.create(
        model="default",
        previous_response_id=response.id,
        input=outputs,
        tools=[weather_tool],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=48,
    )
    assert follow_up.id != response.id and follow_up.output, follow_up
    assert sum(used.values()) == len(calls)

    llm_calls = sum(request == "POST /v1/responses" for request, _, _ in exchanges.seen)
    assert llm_calls == 2
    program_id = exchanges.the_program()
    _check_program(server, before, program_id, origin="responses", calls=2, gap_tools=[{"get_weather"}])


# ---- (c) LangChain: ChatOpenAI.with_structured_output (json_schema) --------------------------------------------------


class Forecast(BaseModel):
    """A weather forecast for one city."""

    city: City = Field(description="the city the forecast is for")
    sunny: bool


def test_langchain_structured_output_conversation_is_one_program(server: Served) -> None:
    exchanges = Exchanges()
    llm = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=API_KEY,
        model="default",
        temperature=0,
        max_tokens=32,
        max_retries=0,
        http_client=exchanges.client(),
    )
    extract = llm.with_structured_output(Forecast, method="json_schema", include_raw=True)
    before = _program_ids(server)
    # Two extractions in one conversation: the second call carries the first one's reply.
    messages = [SystemMessage("You extract weather forecasts."), HumanMessage("Paris: clear skies all day.")]
    first = extract.invoke(messages)
    second = extract.invoke([*messages, first["raw"], HumanMessage("Tokyo: heavy rain.")])

    for extraction in (first, second):
        assert extraction["parsing_error"] is None, extraction
        assert isinstance(extraction["parsed"], Forecast)  # validated against the schema by pydantic
    assert sum(request == "POST /v1/chat/completions" for request, _, _ in exchanges.seen) == 2
    program_id = exchanges.the_program()
    _check_program(server, before, program_id, origin="implicit", calls=2, gap_tools=[{"think"}])
