"""The Berkeley Function Calling Leaderboard's multi-turn tasks, as the ``bfcl-eval`` package ships them.

``bfcl-eval`` (Apache-2.0) is installed without its dependencies (``pip install --no-deps bfcl-eval``: its pins
conflict with plait's; the multi-turn tool classes need only the standard library and ``mpmath``). Its files:

- ``bfcl_eval/data/BFCL_v4_multi_turn_<category>.json``: one task per line, ``{"id", "question", "initial_config",
  "involved_classes", "excluded_function"?}``; ``question`` is a list of turns, each a list of user messages.
- ``bfcl_eval/data/possible_answer/`` the same file name: ``{"id", "ground_truth"}``, per turn the list of calls
  (``"cd(folder='document')"``) that carry out the turn (empty: the request cannot be served with the tools).
- ``bfcl_eval/data/multi_turn_func_doc/<file>.json``: one function schema per line, per class
  (``MULTI_TURN_FUNC_DOC_FILE_MAPPING``); the classes themselves live in ``CLASS_FILE_PATH_MAPPING``'s modules.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from plait.bench.workflow_suites.suite import SuiteDataMissing

CATEGORIES = ("base", "long_context", "miss_param")
INSTALL_HINT = "pip install --no-deps bfcl-eval  (the Berkeley Function Calling Leaderboard's data and tool classes)"


@dataclass(frozen=True)
class BfclTask:
    """One multi-turn task: its turns' user messages, the tool classes it uses (with their starting state), and the
    ground-truth calls of each turn."""

    task_id: str
    category: str
    turns: tuple[str, ...]  # each turn's user messages, joined
    classes: tuple[str, ...]
    initial_config: dict[str, Any]
    excluded_functions: tuple[str, ...]
    ground_truth: tuple[tuple[str, ...], ...]

    @property
    def long_context(self) -> bool:
        """Whether the classes load their long-context scenario (BFCL's rule: the long_context category)."""
        return self.category == "long_context"


def _package() -> Any:
    try:
        return importlib.import_module("bfcl_eval")
    except ImportError as exc:
        raise SuiteDataMissing(f"the bfcl suite needs the bfcl-eval package: {INSTALL_HINT}") from exc


def data_root() -> Path:
    """``bfcl_eval/data`` of the installed package (``SuiteDataMissing`` with the install command otherwise)."""
    root = Path(_package().__file__).parent / "data"
    if not root.is_dir():
        raise SuiteDataMissing(f"{root} not found: the installed bfcl-eval has no data folder; reinstall it")
    return root


def backend_config() -> Any:
    """bfcl-eval's mapping of class names to modules and doc files."""
    _package()
    return importlib.import_module("bfcl_eval.constants.executable_backend_config")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SuiteDataMissing(f"{path} not found in the installed bfcl-eval; reinstall it ({INSTALL_HINT})")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _user_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(message["content"] for message in messages if message.get("role") == "user")


@cache
def load_tasks(category: str) -> tuple[BfclTask, ...]:
    """Every task of ``category`` (one of ``CATEGORIES``) with its ground truth, in the file's order."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL multi-turn category {category!r} (known: {', '.join(CATEGORIES)})")
    root = data_root()
    name = f"BFCL_v4_multi_turn_{category}.json"
    answers = {row["id"]: row["ground_truth"] for row in _json_lines(root / "possible_answer" / name)}
    tasks = []
    for row in _json_lines(root / name):
        truth = answers.get(row["id"])
        if truth is None or len(truth) != len(row["question"]):
            raise SuiteDataMissing(f"{name}: task {row['id']} has no ground truth for each of its turns")
        tasks.append(
            BfclTask(
                task_id=row["id"],
                category=category,
                turns=tuple(_user_text(turn) for turn in row["question"]),
                classes=tuple(row["involved_classes"]),
                initial_config=row.get("initial_config", {}),
                excluded_functions=tuple(row.get("excluded_function", ())),
                ground_truth=tuple(tuple(calls) for calls in truth),
            )
        )
    return tuple(tasks)


@cache
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """The function schemas of one tool class (``{"name", "description", "parameters", ...}`` each)."""
    files = backend_config().MULTI_TURN_FUNC_DOC_FILE_MAPPING
    if class_name not in files:
        raise SuiteDataMissing(f"bfcl-eval has no function docs for class {class_name!r}")
    return tuple(_json_lines(data_root() / "multi_turn_func_doc" / files[class_name]))
