"""``plait info``: versions, the compute device, the default model and the default plan."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

from plait import __version__

_PACKAGES = ("torch", "triton", "xgrammar", "gguf", "tokenizers", "fastapi", "msgspec", "networkx")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show versions, the compute device, the default model and the default plan",
        description="Show plait's and its dependencies' versions, the compute device, the default model's path and the "
        "plan (planner features and engine policy) plait runs with by default.",
    )
    parser.set_defaults(handler=run)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"cuda: {props.name} ({props.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} GPU(s)"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (no CUDA GPU)"


def run(args: argparse.Namespace) -> int:
    from plait.engine import ModelNotFoundError, default_model_path

    print(f"plait       {__version__}")
    print(f"python      {sys.version.split()[0]}")
    for package in _PACKAGES:
        print(f"{package:<11} {_version(package)}")
    print(f"device      {_device()}")
    try:
        path = default_model_path()
    except ModelNotFoundError as error:
        print(f"model       missing: {error}", file=sys.stderr)
        return 1
    print(f"model       {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    _print_default_plan()
    return 0


def _print_default_plan() -> None:
    """What ``plait serve`` / ``plait run`` / ``plait.Runtime`` plan with unless told otherwise (``--plan``)."""
    from plait.runtime.planning import PlanConfig

    plan = PlanConfig()
    print("plan        plait (the default; --plan baseline serves a request-level engine)")
    for line in plan.describe():
        print(f"            {line}")
    print(f"policy      {plan.engine.describe()}")
