"""The layering rules of ``plait/*/__init__.py``: imports point downwards only.

sdk -> runtime -> dag / semantic_vars; runtime -> engine -> cache; cache and semantic_vars import no other layer;
cli and bench may import anything. Every import statement counts, including ones inside functions and under
``TYPE_CHECKING``, and ``importlib.import_module("plait....")`` calls with a literal name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAIT = REPO_ROOT / "plait"

ALLOWED: dict[str, set[str]] = {
    "server": {"sdk", "runtime", "dag", "semantic_vars", "engine"},
    "cache": set(),
    "engine": {"cache"},
    "semantic_vars": set(),
    "dag": {"semantic_vars"},
    "runtime": {"dag", "semantic_vars", "engine"},
    "sdk": {"runtime", "dag", "semantic_vars"},
}
UNRESTRICTED = ("cli", "bench")
DOCUMENTED_LAYERS = ("server", "sdk", "semantic_vars", "dag", "runtime", "engine", "cache", "bench")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str | None, level: int, importer: str, is_package: bool) -> str:
    package = importer.split(".")
    if not is_package:
        package.pop()
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


def _imported_modules(path: Path, root: Path = REPO_ROOT) -> list[tuple[int, str]]:
    """Every module name ``path`` imports, with its line: ``from a import b`` yields ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    importer = _module_name(path, root)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, importer, is_package) if node.level else node.module or ""
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _layer_of(module: str) -> str | None:
    """The plait layer a module belongs to; None for non-plait modules and the bare ``plait`` package."""
    parts = module.split(".")
    if parts[0] != "plait" or len(parts) < 2:
        return None
    if parts[1] == "__version__":
        return None
    return parts[1]


def _violations(layer: str) -> list[str]:
    allowed = ALLOWED[layer] | {layer}
    problems = []
    for path in sorted((PLAIT / layer).rglob("*.py")):
        for line, module in _imported_modules(path):
            target = _layer_of(module)
            if target is not None and target not in allowed:
                problems.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module} (layer '{target}')")
    return problems


def test_import_scanner_sees_nested_relative_and_dynamic_imports(tmp_path: Path) -> None:
    module = tmp_path / "plait" / "cache" / "sub" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from plait.runtime import x\n"
        "def f():\n"
        "    import plait.engine.sampler\n"
        "    from ... import dag\n"
        "    from .. import kv_pool\n"
        "    importlib.import_module('plait.sdk')\n",
        encoding="utf-8",
    )
    layers = {_layer_of(name) for _, name in _imported_modules(module, root=tmp_path)} - {None}
    assert layers == {"runtime", "engine", "dag", "cache", "sdk"}


def test_every_plait_subpackage_is_classified() -> None:
    packages = {path.parent.name for path in PLAIT.glob("*/__init__.py")}
    assert packages <= set(ALLOWED) | set(UNRESTRICTED), packages - set(ALLOWED) - set(UNRESTRICTED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_allowed_layers(layer: str) -> None:
    if not (PLAIT / layer).is_dir():
        pytest.skip(f"plait/{layer} does not exist")
    assert _violations(layer) == []


@pytest.mark.parametrize("layer", UNRESTRICTED)
def test_unrestricted_layer_files_parse(layer: str) -> None:
    for path in (PLAIT / layer).rglob("*.py"):
        _imported_modules(path)  # they may import anything, but must at least be valid Python


@pytest.mark.parametrize("layer", DOCUMENTED_LAYERS)
def test_subpackage_docstring_states_ownership_and_imports(layer: str) -> None:
    init = PLAIT / layer / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring, f"{init.relative_to(REPO_ROOT)} has no module docstring"
    assert "Owns:" in docstring, f"{init.relative_to(REPO_ROOT)} does not say what it owns"
    assert "May import" in docstring or "may import" in docstring, f"{init.relative_to(REPO_ROOT)}: no import rule"


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_engine_loads_no_upper_layer() -> None:
    loaded = _modules_loaded_by("import plait.engine")
    plait_layers = {_layer_of(name) for name in loaded} - {None}
    assert "engine" in plait_layers
    assert not plait_layers & {"runtime", "dag", "sdk", "semantic_vars", "cli", "bench"}, plait_layers


def test_importing_cache_loads_no_other_layer() -> None:
    loaded = _modules_loaded_by("import plait.cache")
    assert {_layer_of(name) for name in loaded} - {None} == {"cache"}
