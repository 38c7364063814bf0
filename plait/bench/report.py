"""Shared output of every benchmark: a rich table on the terminal and a JSON file with the device and date."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import re
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


def device_name() -> str:
    """The GPU's name, or the CPU's model name and the number of threads torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU {model} x{torch.get_num_threads()} threads"


# Where a benchmark writes its JSON without ``--output``: under the working directory, never into the repository's
# ``bench/results/`` (which holds the committed GPU results; scripts that add to it pass ``--output``).
RESULTS_DIR = Path("plait-results")


def default_output(bench: str) -> Path:
    """``plait-results/<bench>_<device>_<date>.json`` under the working directory (created when written)."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name().lower()).strip("-")
    return RESULTS_DIR / f"{bench}_{slug}_{dt.date.today().isoformat()}.json"


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*[f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row])
    console = Console()
    if console.width < 140:  # logs and pipes: wide enough that no column name is cut
        console = Console(width=140)
    console.print(table)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    payload = {"device": device_name(), "date": dt.datetime.now().isoformat(timespec="seconds"), **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
