"""Run a ``plait`` command with module constants overridden, to compare kernel variants in one process each.

Usage: python bench/gpu/engine_variants.py --set plait.engine.kernels.gemv.MAX_WEIGHT_BYTES=0 -- bench engine ...
Values are Python literals (``0``, ``False``, ``2.5``).
"""

from __future__ import annotations

import argparse
import ast
import importlib

from plait.cli import main as plait_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the plait command, after --")
    args = parser.parse_args()
    for item in args.set:
        target, _, value = item.partition("=")
        module_name, _, name = target.rpartition(".")
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            parser.error(f"{module_name} has no {name}")
        setattr(module, name, ast.literal_eval(value))
        print(f"set {target} = {value}")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return plait_main(command)


if __name__ == "__main__":
    raise SystemExit(main())
