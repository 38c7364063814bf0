"""Chat templates: the default model's template against HF transformers, the sandbox's helpers, and validation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from plait.engine.chat_template import CHATML_TEMPLATE, render_chat
from plait.engine.errors import InvalidRequestError
from plait.engine.tokenizer import ByteTokenizer, Tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": 'What is 2+2? Answer with <b>HTML</b> & "quotes".'},
    {"role": "assistant", "content": "4"},
]
SINGLE = [{"role": "user", "content": "Hello 🦙, how are you?\nFine?"}]


@pytest.fixture(scope="module")
def smol_pair() -> tuple[Tokenizer, Any]:
    """The default model's tokenizer, and transformers' tokenizer for the same GGUF file."""
    from plait.engine.default_model import default_model_path

    try:
        path = default_model_path()
    except Exception as exc:
        pytest.skip(f"the default model is not installed: {exc}")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return Tokenizer.from_gguf(path), hf


@pytest.mark.parametrize("messages", [CONVERSATION, SINGLE, CONVERSATION[1:]], ids=["three", "single", "two"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_default_model_matches_transformers(
    smol_pair: tuple[Tokenizer, Any], messages: list[dict[str, Any]], add_generation_prompt: bool
) -> None:
    ours, hf = smol_pair
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_default_model_rendering(smol_pair: tuple[Tokenizer, Any]) -> None:
    ours, _ = smol_pair
    text = ours.apply_chat_template(SINGLE)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2 adds its own system prompt when there is none
    assert text.endswith("<|im_start|>user\nHello 🦙, how are you?\nFine?<|im_end|>\n<|im_start|>assistant\n")


def test_chatml_fallback() -> None:
    expected = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    messages = [CONVERSATION[0], {"role": "user", "content": "hi"}]
    assert render_chat(None, messages) == expected
    assert render_chat(CHATML_TEMPLATE, messages, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )
    assert ByteTokenizer().apply_chat_template(messages) == expected  # no template of its own


def test_tokenizer_passes_its_special_tokens() -> None:
    byte = ByteTokenizer()
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{{ tools | length }}"
    tokenizer = Tokenizer(byte.backend, bos_token_id=256, eos_token_id=257, chat_template=template)
    assert tokenizer.apply_chat_template(SINGLE, tools=[{"name": "t"}]) == f"<s>{SINGLE[0]['content']}</s>1"


def test_template_environment() -> None:
    template = (
        "{{ messages[0].content | tojson }}|{{ {'a': [1, 2]} | tojson(indent=2) }}|{{ strftime_now('%Y') }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}|"
        "{{ enable_thinking }}|{{ tools }}"
    )
    text = render_chat(template, [{"role": "user", "content": "<b>é</b> & 'x'"}], enable_thinking=False)
    content, indented, year, roles, thinking, tools = text.split("|")
    assert content == "\"<b>é</b> & 'x'\""  # no HTML escaping, no \\u escapes
    assert indented == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert year == str(datetime.now().year)
    assert (roles, thinking, tools) == ("user", "False", "None")


def test_trim_and_lstrip_blocks() -> None:
    template = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n"
    assert render_chat(template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"


def test_compiled_templates_are_cached() -> None:
    from plait.engine import chat_template

    template = "{{ messages | length }} cached"
    render_chat(template, SINGLE)
    hits = chat_template._compile.cache_info().hits
    assert render_chat(template, SINGLE + SINGLE) == "2 cached"
    assert chat_template._compile.cache_info().hits == hits + 1


def test_tool_calls_may_have_null_content() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny"},
    ]
    assert "<|im_start|>assistant\n<|im_end|>" in render_chat(None, messages)


# -- errors name the field -------------------------------------------------------------------------------------


def _field_of(messages: Any, template: str | None = None) -> tuple[str, str]:
    with pytest.raises(InvalidRequestError) as info:
        render_chat(template, messages)
    return info.value.field, info.value.message


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ("hello", "messages"),
        (None, "messages"),
        ([{"role": "user", "content": "a"}, "b"], "messages[1]"),
        ([{"role": "user", "content": "a"}] * 3 + [{"content": "no role"}], "messages[3].role"),
        ([{"role": 7, "content": "a"}], "messages[0].role"),
        ([{"role": "", "content": "a"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": ["parts"]}], "messages[1].content"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], "messages[0].content"),
    ],
)
def test_invalid_messages(messages: Any, field: str) -> None:
    assert _field_of(messages)[0] == field


def test_raise_exception_message_reaches_the_user() -> None:
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user') }}{% endif %}"
    )
    field, message = _field_of([{"role": "assistant", "content": "hi"}], template)
    assert (field, message) == ("messages", "Conversations must start with a user")
    assert render_chat(template, SINGLE) == ""


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{{ m.content }",  # syntax error
        "{{ messages[0].content + 1 }}",  # type error on these messages
        "{{ messages.append(1) }}",  # the sandbox forbids mutation
        "{{ ''.__class__.__mro__ }}{{ messages.__class__.__subclasses__() }}",  # and private attributes
    ],
)
def test_template_failures(template: str) -> None:
    field, message = _field_of(SINGLE, template)
    assert field == "messages" and message
