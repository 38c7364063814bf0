"""``plait run``: outputs, exit codes and errors that say what to fix (tiny dummy model: fast, outputs meaningless)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plait.cli import main

TINY_FLAGS = ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_runs_a_workflow_and_prints_outputs_as_json(tmp_path, capsys, one_thread) -> None:
    path = _write(
        tmp_path,
        {
            "inputs": {"topic": "tea"},
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "About {{topic}}:", "output": "x", "max_tokens": 3},
                {"kind": "llm", "id": "b", "prompt": "More: {{x}}", "output": "y", "max_tokens": 2, "n": 2},
            ],
        },
    )
    assert main(["run", str(path), "--json", "--input", "topic=coffee", *TINY_FLAGS]) == 0
    outputs = json.loads(capsys.readouterr().out)
    assert list(outputs) == ["y"] and isinstance(outputs["y"], list) and len(outputs["y"]) == 2


def test_example_workflow_runs_with_its_tools(capsys, one_thread) -> None:
    code = main(
        ["run", str(EXAMPLES / "qa_check.json"), "--json", "--tools", f"{EXAMPLES / 'tools.py'}:TOOLS", *TINY_FLAGS]
    )
    assert code == 0, capsys.readouterr().err
    outputs = json.loads(capsys.readouterr().out)
    assert outputs["words"] == len(outputs["reply"].split())
    assert outputs["verdict"] in ("yes", "no")


def test_invalid_workflow_exits_2_naming_node_and_field(tmp_path, capsys) -> None:
    path = _write(
        tmp_path,
        {
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "{{missing}}", "output": "x"},
                {"kind": "tool", "id": "t", "tool": "nope", "output": "y"},
            ]
        },
    )
    assert main(["run", str(path), "--json", *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "node 'a'" in err and "'missing'" in err
    assert "node 't'" in err and "unknown tool 'nope'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "/nonexistent/wf.json"], "cannot read"),
        (["run", "WF", "--input", "novalue"], "NAME=VALUE"),
        (["run", "WF", "--tools", "no_such_module_xyz:tools"], "cannot import"),
        (["run", "WF", "--tools", "json"], "MODULE:ATTR"),
    ],
)
def test_bad_arguments_say_what_to_fix(tmp_path, capsys, argv, message) -> None:
    path = _write(tmp_path, {"nodes": []})
    argv = [str(path) if item == "WF" else item for item in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code, err = 2, str(exit_.code)
    else:
        err = capsys.readouterr().err
    assert code == 2 and message in err


def test_schema_flag_prints_the_wire_format(capsys) -> None:
    assert main(["run", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "WorkflowSpec" in schema["$defs"]


def test_unknown_json_field_is_reported_with_its_path(tmp_path, capsys) -> None:
    path = _write(tmp_path, {"nodes": [{"kind": "llm", "id": "a", "prompt": "x", "output": "y", "max_tokenz": 3}]})
    assert main(["run", str(path), *TINY_FLAGS]) == 2
    assert "max_tokenz" in capsys.readouterr().err


def test_rejected_call_leaves_no_literal_inputs_behind(one_thread) -> None:
    import asyncio

    import plait
    from plait.dag import WorkflowError
    from plait.engine import EngineConfig
    from plait.semantic_vars import SemanticVarError

    @plait.program
    async def program(p: plait.Program) -> int:
        before = dict(p.execution.workflow.variables)
        try:
            p.gen("{{x}} {{y}}", x="literal", max_tokens=2)
        except WorkflowError as error:
            assert "'y'" in str(error)
        try:
            p.gen("{{seed}}", seed=3)  # a decoding keyword that is also a slot: ambiguous
        except SemanticVarError as error:
            assert error.field == "seed" and "bindings=" in error.message
        assert p.execution.workflow.variables == before
        return len(p.execution.workflow.nodes)

    async def scenario() -> int:
        runtime = plait.Runtime(EngineConfig(model="tiny", weights="dummy", device="cpu", dtype="float32"))
        try:
            return await runtime.run(program)
        finally:
            runtime.close()

    assert asyncio.run(scenario()) == 0


def test_the_table_ends_its_line_when_the_output_is_not_a_terminal(monkeypatch, one_thread) -> None:
    """Piped or redirected (``2>&1 | tee log``), the table is printed once, ended by a newline: the outputs printed
    after it start on their own line."""
    import io

    combined = io.StringIO()  # stdout and stderr into one stream, as `2>&1` does; not a terminal
    monkeypatch.setattr("sys.stdout", combined)
    monkeypatch.setattr("sys.stderr", combined)
    code = main(["run", str(EXAMPLES / "qa_check.json"), "--tools", f"{EXAMPLES / 'tools.py'}:TOOLS", *TINY_FLAGS])
    out = combined.getvalue()
    assert code == 0, out
    assert "qa_check [done]" in out  # the state is text, not a markup tag rich swallows
    bottom = next(line for line in out.splitlines() if line.startswith("└"))
    assert bottom.endswith("┘"), f"text glued to the table's bottom border: {bottom!r}"
    assert out.count("└") == 1  # printed once, not redrawn
    lines = out.splitlines()
    assert lines[lines.index(bottom) + 1].startswith("reply: ")


def test_a_broken_workflow_is_reported_whole_before_the_model_loads(tmp_path, capsys, monkeypatch) -> None:
    """Two fields of a wrong type and a graph problem, all in one report; the engine is never built."""
    from plait.engine.engine_core import EngineCore

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load before the workflow is validated")

    monkeypatch.setattr(EngineCore, "__init__", no_model)
    path = _write(
        tmp_path,
        {
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "Q: {{q}}", "output": "x", "max_tokens": "ten"},
                {"kind": "tool", "id": "t", "tool": "word_count", "output": "n", "args": {"text": 3}},
                {"kind": "llm", "id": "b", "prompt": "{{x}} {{n}} {{ghost}}", "output": "y", "n": "two"},
            ],
        },
    )
    tools = f"{EXAMPLES / 'tools.py'}:TOOLS"
    assert main(["run", str(path), "--tools", tools, "--input", "q=why", *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err, err
    assert "'nodes[0].max_tokens'" in err and "'nodes[2].n'" in err
    assert "node 't', field 'args.text'" in err and "expects string, got integer" in err
    # b is broken (n), so its graph problems ({{ghost}}) show once its fields decode; a's output x still exists.


def test_bad_engine_settings_are_reported_before_the_model_loads(tmp_path, capsys, monkeypatch) -> None:
    from plait.engine.engine_core import EngineCore

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load before the settings are checked")

    monkeypatch.setattr(EngineCore, "__init__", no_model)
    path = _write(tmp_path, {"nodes": [{"kind": "llm", "id": "a", "prompt": "hi", "output": "x"}]})
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), *TINY_FLAGS, "--kv-slots", "-5"])
    assert exit_.value.code == 2 and "kv_slots" in capsys.readouterr().err


@pytest.mark.slow
def test_the_bundled_example_runs_cleanly_on_the_default_model(default_gguf) -> None:
    """What the README's first commands show: ``plait run`` on the example, no traceback on stderr (a planner hook
    that raised used to print one on every run: its chat-messages call feeds a later call)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "plait", "run", "examples/workflows/qa_check.json", "--device", "cpu",
         "--tools", "examples/workflows/tools.py:TOOLS"],
        cwd=EXAMPLES.parents[1], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "hook" not in result.stderr, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["reply", "words", "verdict"]
