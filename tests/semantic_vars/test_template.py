"""Prompt templates: slot parsing, escaping, bad names, static prefixes, rendering values, chat prompts."""

from __future__ import annotations

import pytest

from plait.semantic_vars import ChatPrompt, Message, SemanticVarError, Template, render_value


@pytest.mark.parametrize(
    ("text", "slots"),
    [
        ("no slots at all", ()),
        ("{{a}}", ("a",)),
        ("{{ a }} and {{b}}", ("a", "b")),
        ("{{  spaced_out\t}}", ("spaced_out",)),
        ("{{\nmultiline\n}}", ("multiline",)),
        ("{{b}} {{a}} {{b}} {{a}}", ("b", "a")),  # each once, in order of first appearance
        ("{{_x1}}{{X_2}}", ("_x1", "X_2")),
    ],
)
def test_slots(text: str, slots: tuple[str, ...]) -> None:
    assert Template(text).slots == slots


def test_repeated_slot_renders_every_occurrence() -> None:
    template = Template("{{x}}-{{ x }}-{{x}}")
    assert template.slots == ("x",)
    assert template.render({"x": "ab"}) == "ab-ab-ab"


def test_escaped_braces_are_literal_and_not_slots() -> None:
    template = Template(r"literal \{{name}} then {{real}}")
    assert template.slots == ("real",)
    assert template.render({"real": "R"}) == "literal {{name}} then R"
    # An escape right before a real slot: the escape is literal, the slot still a slot.
    assert Template(r"\{{{{x}}").render({"x": "1"}) == "{{1"
    assert Template(r"\{{").render({}) == "{{"


def test_json_and_code_are_not_special() -> None:
    text = 'Answer as {"name": "...", "tags": [{"k": 1}]} for {{q}}; f"{x}" {single}'
    template = Template(text)
    assert template.slots == ("q",)
    assert template.render({"q": "Q"}) == text.replace("{{q}}", "Q")
    # Three braces: the outer one is literal JSON, the inner pair a slot.
    assert Template('{"v": {{{x}}}}').render({"x": "1"}) == '{"v": {1}}'


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("{{not a name}}", 1),
        ("ok\n\nbad {{1abc}} here", 3),
        ("{{}}", 1),
        ("line1\n{{a-b}}", 2),
        ("{{ok}}\n{{ok}}\n{{a.b}}", 3),
    ],
)
def test_invalid_slot_names_name_the_line(text: str, line: int) -> None:
    with pytest.raises(SemanticVarError) as caught:
        Template(text)
    assert caught.value.field == "template"
    assert f"line {line}" in caught.value.message
    assert "not a valid name" in caught.value.message


def test_template_must_be_text() -> None:
    with pytest.raises(SemanticVarError, match="must be a string"):
        Template(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("System: be brief.\nQ: {{q}}\nA:", "System: be brief.\nQ: "),
        ("{{q}} first", ""),
        ("no slots", "no slots"),
        (r"escaped \{{x}} then {{y}}", "escaped {{x}} then "),
        ("", ""),
    ],
)
def test_static_prefix(text: str, prefix: str) -> None:
    assert Template(text).static_prefix == prefix


def test_render_strings_lists_and_json_values() -> None:
    template = Template("[{{v}}]")
    assert template.render({"v": "plain text"}) == "[plain text]"
    assert template.render({"v": ["a", "b", "c"]}) == "[a\nb\nc]"
    assert template.render({"v": ("t1", "t2")}) == "[t1\nt2]"
    assert template.render({"v": {"k": [1, 2], "s": "x"}}) == '[{"k":[1,2],"s":"x"}]'
    assert template.render({"v": 3}) == "[3]"
    assert template.render({"v": 2.5}) == "[2.5]"
    assert template.render({"v": True}) == "[true]"
    assert template.render({"v": None}) == "[null]"
    # A list of non-strings: each item rendered on its own line (dicts as JSON).
    assert template.render({"v": [{"a": 1}, 2, "s"]}) == '[{"a":1}\n2\ns]'


def test_render_value_nested_lists_flatten_to_lines() -> None:
    assert render_value([["a", "b"], "c"]) == "a\nb\nc"
    assert render_value([]) == ""


def test_render_missing_slot_names_it() -> None:
    template = Template("{{a}} and {{b}}")
    with pytest.raises(SemanticVarError) as caught:
        template.render({"a": "x"})
    assert caught.value.field == "b"
    assert "no value is bound" in caught.value.message


def test_render_ignores_extra_values() -> None:
    assert Template("hi {{a}}").render({"a": "A", "unused": "zzz"}) == "hi A"


def test_render_does_not_reinterpret_values() -> None:
    # A value that looks like a slot is inserted verbatim (no second pass).
    assert Template("{{a}}").render({"a": "{{b}}"}) == "{{b}}"


# ---- chat prompts ---------------------------------------------------------------------------------------------------


def test_chat_prompt_slots_prefix_and_render() -> None:
    chat = ChatPrompt.from_dicts(
        [
            {"role": "system", "content": "You write SQL."},
            {"role": "user", "content": "Schema: {{schema}}\nQ: {{question}} ({{schema}})"},
            {"role": "assistant", "content": "{{draft}}"},
        ]
    )
    assert chat.slots == ("schema", "question", "draft")
    assert chat.static_prefix == "<system>You write SQL.<user>Schema: "
    assert chat.render({"schema": "t(a)", "question": "how many?", "draft": ["x", "y"]}) == [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "Schema: t(a)\nQ: how many? (t(a))"},
        {"role": "assistant", "content": "x\ny"},
    ]


def test_chat_prompt_without_slots_prefix_is_every_message() -> None:
    chat = ChatPrompt((Message("system", Template("S")), Message("user", Template("U"))))
    assert chat.slots == ()
    assert chat.static_prefix == "<system>S<user>U"


def test_chat_prompt_missing_value_names_slot() -> None:
    chat = ChatPrompt.from_dicts([{"role": "user", "content": "{{q}}"}])
    with pytest.raises(SemanticVarError) as caught:
        chat.render({})
    assert caught.value.field == "q"


def test_chat_prompt_errors_name_the_message() -> None:
    with pytest.raises(SemanticVarError) as caught:
        ChatPrompt.from_dicts([{"role": "user", "content": "ok"}, {"role": "robot", "content": "x"}])
    assert caught.value.field == "messages[1].role"
    assert "robot" in caught.value.message
    with pytest.raises(SemanticVarError) as caught:
        ChatPrompt.from_dicts([{"role": "user", "content": "fine"}, {"role": "user", "content": "{{bad name}}"}])
    assert caught.value.field == "messages[1].content"
    assert "line 1" in caught.value.message
    with pytest.raises(SemanticVarError) as caught:
        ChatPrompt.from_dicts([{"role": "user"}])
    assert caught.value.field == "messages[0]"
    with pytest.raises(SemanticVarError) as caught:
        ChatPrompt.from_dicts([{"role": "user", "content": "x", "name": "bob"}])
    assert caught.value.field == "messages[0]"
    with pytest.raises(SemanticVarError) as caught:
        ChatPrompt.from_dicts([])
    assert caught.value.field == "messages"


def test_message_role_checked() -> None:
    with pytest.raises(SemanticVarError) as caught:
        Message("narrator", Template("x"))
    assert caught.value.field == "role"
    for role in ("system", "user", "assistant", "tool"):
        assert Message(role, Template("x")).role == role


@pytest.mark.parametrize("text", ["Hello {{name}", "a\n{{ b", "{{x}} then {{"])
def test_unclosed_slot_is_an_error_with_its_line(text: str) -> None:
    with pytest.raises(SemanticVarError, match="never closed"):
        Template(text)


def test_chat_prefix_of_a_leading_slot_message_is_empty() -> None:
    chat = ChatPrompt.from_dicts([{"role": "user", "content": "{{q}} please"}])
    assert chat.static_prefix == ""


def test_render_parts_name_each_slot_and_join_to_the_rendering() -> None:
    template = Template("Q: {{q}}\n{{a}}{{b}} end")
    values = {"q": "why?", "a": ["x", "y"], "b": {"k": 1}}
    parts = template.render_parts(values)
    assert parts == [(None, "Q: "), ("q", "why?"), (None, "\n"), ("a", "x\ny"), ("b", '{"k":1}'), (None, " end")]
    assert "".join(text for _, text in parts) == template.render(values)
    assert Template("{{q}}").render_parts({"q": "v"}) == [("q", "v")]  # empty literals are left out
