"""TextOutput: streamed text deltas with stop strings cut exactly and never leaked, using a fake detokenizer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from plait.engine.text_output import TextOutput


class FakeDetokenizer:
    """Token ``i`` decodes to ``pieces[i]``; ``flush`` returns ``tail`` once (text a real one would hold back)."""

    def __init__(self, pieces: list[str], tail: str = "") -> None:
        self.pieces = pieces
        self.tail = tail

    def add(self, token_id: int) -> str:
        return self.pieces[token_id]

    def flush(self) -> str:
        tail, self.tail = self.tail, ""
        return tail


def _stream(pieces: list[str], stop: list[str], tail: str = "") -> tuple[list[str], bool, str]:
    """Feed every piece until a stop hit; returns (deltas from add, hit, what finish() returned if no hit)."""
    output = TextOutput(FakeDetokenizer(pieces, tail), stop)  # type: ignore[arg-type]
    deltas = []
    for token_id in range(len(pieces)):
        delta, hit = output.add(token_id)
        deltas.append(delta)
        if hit:
            return deltas, True, ""
    return deltas, False, output.finish()


def test_without_stop_strings_text_streams_immediately() -> None:
    pieces = ["Hel", "lo", ",", " world", "!"]
    deltas, hit, rest = _stream(pieces, [])
    assert deltas == pieces
    assert not hit
    assert rest == ""


def test_empty_pieces_produce_empty_deltas() -> None:
    deltas, _, _ = _stream(["a", "", "b"], [])
    assert deltas == ["a", "", "b"]


def test_stop_string_spanning_tokens_is_cut_exactly() -> None:
    pieces = ["Hello", " wor", "ld", "<", "/s", ">", " never"]
    deltas, hit, _ = _stream(pieces, ["</s>"])
    assert hit
    assert "".join(deltas) == "Hello world"
    assert len(deltas) == 6  # it stops at the token that completes the stop string


def test_stop_string_prefix_is_never_emitted_before_the_hit() -> None:
    pieces = ["ok ", "<", "/", "s", ">"]
    output = TextOutput(FakeDetokenizer(pieces), ["</s>"])  # type: ignore[arg-type]
    emitted = ""
    for token_id in range(len(pieces)):
        delta, hit = output.add(token_id)
        emitted += delta
        assert "<" not in emitted
    assert hit
    assert emitted == "ok "


def test_stop_string_inside_one_token_cuts_mid_token() -> None:
    deltas, hit, _ = _stream(["ab", "cSTOPdef"], ["STOP"])
    assert hit
    assert "".join(deltas) == "abc"


def test_stop_string_at_the_very_start_emits_nothing() -> None:
    deltas, hit, _ = _stream(["ST", "OP", "x"], ["STOP"])
    assert hit
    assert "".join(deltas) == ""


def test_text_is_cut_in_the_output_text_attribute() -> None:
    output = TextOutput(FakeDetokenizer(["abc", "<end>", "zzz"]), ["<end>"])  # type: ignore[arg-type]
    output.add(0)
    _, hit = output.add(1)
    assert hit
    assert output.text == "abc"


def test_false_start_of_a_stop_string_is_released_later() -> None:
    pieces = ["a", "ST", "O", "x", "12345"]
    output = TextOutput(FakeDetokenizer(pieces), ["STOP"])  # type: ignore[arg-type]
    emitted = ""
    for token_id in range(4):
        delta, hit = output.add(token_id)
        assert not hit
        emitted += delta
    assert emitted.startswith("a")
    delta, hit = output.add(4)
    emitted += delta
    assert not hit
    assert emitted.startswith("aSTOx")  # "STOx" can no longer become "STOP": it is out
    emitted += output.finish()
    assert emitted == "aSTOx12345"


def test_false_start_at_the_end_is_released_by_finish() -> None:
    deltas, hit, rest = _stream(["value: ", "ST", "O"], ["STOP"])
    assert not hit
    assert "".join(deltas) + rest == "value: STO"
    assert rest.endswith("STO")


def test_text_that_cannot_start_a_stop_string_is_not_held_back() -> None:
    output = TextOutput(FakeDetokenizer(["hello"]), ["STOP"])  # type: ignore[arg-type]
    delta, hit = output.add(0)
    assert not hit
    assert delta == "hello"


def test_earliest_of_several_stop_strings_wins() -> None:
    deltas, hit, _ = _stream(["say: ", "hello world"], ["world", "o"])
    assert hit
    assert "".join(deltas) == "say: hell"


def test_earliest_stop_wins_even_when_listed_last() -> None:
    deltas, hit, _ = _stream(["x", "abcd"], ["bc", "abcd"])
    assert hit
    assert "".join(deltas) == "x"


def test_finish_flushes_held_back_text_and_detokenizer_tail() -> None:
    output = TextOutput(FakeDetokenizer(["abc", "<st"], tail="f!"), ["<stop>"])  # type: ignore[arg-type]
    emitted = output.add(0)[0] + output.add(1)[0]
    assert emitted == "abc"  # "<st" is held back: it could begin "<stop>"
    emitted += output.finish()
    assert emitted == "abc<stf!"


def test_finish_without_stop_strings_returns_detokenizer_tail() -> None:
    output = TextOutput(FakeDetokenizer(["abc"], tail="\ufffd"), [])  # type: ignore[arg-type]
    assert output.add(0) == ("abc", False)
    assert output.finish() == "\ufffd"


def test_finish_cuts_a_stop_string_completed_by_the_flushed_tail() -> None:
    output = TextOutput(FakeDetokenizer(["answer<", "/"], tail="s> extra"), ["</s>"])  # type: ignore[arg-type]
    emitted = output.add(0)[0] + output.add(1)[0]
    emitted += output.finish()
    assert emitted == "answer"


def _reference(pieces: list[str], stop: list[str]) -> tuple[str, bool]:
    """What the sample's text must be: cut at the earliest stop in the text of the first token that holds one."""
    text = ""
    for piece in pieces:
        text += piece
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if hits:
            return text[: min(hits)], True
    return text, False


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="abS<>", max_size=4), max_size=12),
    stop=st.lists(st.text(alphabet="abS<>", min_size=1, max_size=4), max_size=3),
)
def test_streamed_text_matches_reference_and_never_leaks_a_stop(pieces: list[str], stop: list[str]) -> None:
    deltas, hit, rest = _stream(pieces, stop)
    expected, expected_hit = _reference(pieces, stop)
    assert hit == expected_hit
    streamed = "".join(deltas) + rest
    assert streamed == expected
    for s in stop:
        assert s not in streamed
