"""What ``plait bench soak`` samples every few seconds: the server's RSS, its KV use and engine queue (``/metrics``),
its running programs, and the journal's size on disk; and the plot of those samples over time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plait.bench.serve_load import parse_metrics

MONITOR_KIND = "monitor"  # the kind under which /metrics scrapes are recorded
_RUNNING_PROGRAMS = re.compile(r'^plait_programs\{state="running"\} (\S+)$', re.MULTILINE)


@dataclass
class Sample:
    t_s: float  # seconds since the load started (negative before it)
    phase: str  # "load" while clients run, "drain" while the last ones finish, "idle" while waiting for idle
    rss_bytes: int | None = None  # None: the server is not a process of this run
    kv_usage_ratio: float | None = None  # KV slots held by requests / total (None: /metrics did not answer)
    kv_cached_slots: float | None = None  # KV slots kept by the prefix cache (not in use)
    running_requests: float | None = None
    waiting_requests: float | None = None
    running_programs: float | None = None
    journal_bytes: int | None = None  # None: no data directory


def process_rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (psutil when installed, else ``/proc/PID/status``); None once it is gone."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (files that vanish while it is walked count as empty)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def running_programs(metrics_text: str) -> float | None:
    """``plait_programs{state="running"}`` of a ``/metrics`` exposition."""
    found = _RUNNING_PROGRAMS.search(metrics_text)
    return float(found.group(1)) if found else None


class Monitor:
    """Samples every ``interval_s`` into ``samples`` until ``stop``; ``phase`` is set by the load's driver.

    ``pid`` (the server's process, for RSS) and ``journal_dir`` (for the journal's size) are optional: a ``--target``
    server is measured through ``/metrics`` only. ``record(kind, method, path, status, body)`` gets each scrape's
    status (``HttpLog.record``)."""

    def __init__(
        self,
        client: Any,
        interval_s: float,
        *,
        pid: int | None,
        journal_dir: Path | None,
        started: float,
        record: Callable[[str, str, str, int, str], None] | None = None,
    ) -> None:
        self.client = client
        self.record = record
        self.interval_s = interval_s
        self.pid = pid
        self.journal_dir = journal_dir
        self.started = started  # time.monotonic() of the load's start
        self.phase = "load"
        self.samples: list[Sample] = []
        self.metrics_failures: list[str] = []
        self._stopped = asyncio.Event()

    async def sample(self) -> Sample:
        """One sample now (also appended to ``samples``)."""
        sample = Sample(t_s=time.monotonic() - self.started, phase=self.phase)
        if self.pid is not None:
            sample.rss_bytes = process_rss_bytes(self.pid)
        if self.journal_dir is not None and self.journal_dir.exists():
            sample.journal_bytes = directory_bytes(self.journal_dir)
        try:
            response = await self.client.get("/metrics")
            if self.record is not None:
                body = response.text if response.status_code >= 500 else ""
                self.record(MONITOR_KIND, "GET", "/metrics", response.status_code, body)
            if response.status_code == 200:
                metrics = parse_metrics(response.text)
                sample.kv_usage_ratio = metrics.get("plait_kv_usage_ratio")
                sample.kv_cached_slots = metrics.get("plait_kv_cached_slots")
                sample.running_requests = metrics.get("plait_running_requests")
                sample.waiting_requests = metrics.get("plait_queue_depth")
                sample.running_programs = running_programs(response.text)
            else:
                self.metrics_failures.append(f"t={sample.t_s:.0f} s: /metrics HTTP {response.status_code}")
        except Exception as error:  # a failed scrape is recorded; the soak goes on
            self.metrics_failures.append(f"t={sample.t_s:.0f} s: /metrics {type(error).__name__}: {error}")
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        """Sample until ``stop``: one at once, then every ``interval_s``."""
        while not self._stopped.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.interval_s)

    def stop(self) -> None:
        self._stopped.set()


def plot_samples(samples: list[Sample], path: Path, *, title: str, rss_fit: dict[str, Any] | None = None) -> Path:
    """RSS (with its fitted slope), KV in use and the journal's size over time, one panel each, saved to ``path``.
    Raises ``ImportError`` without matplotlib (the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 1024 * 1024
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    rss = [(s.t_s, s.rss_bytes / mib) for s in samples if s.rss_bytes is not None]
    kv = [(s.t_s, 100 * s.kv_usage_ratio) for s in samples if s.kv_usage_ratio is not None]
    journal = [(s.t_s, s.journal_bytes / mib) for s in samples if s.journal_bytes is not None]
    panels = [
        (axes[0], rss, "server RSS (MiB)"),
        (axes[1], kv, "KV in use (% of slots)"),
        (axes[2], journal, "journal on disk (MiB)"),
    ]
    for axis, points, label in panels:
        if points:
            axis.plot([t for t, _ in points], [v for _, v in points], marker=".", linewidth=1)
        else:
            axis.text(0.5, 0.5, "not measured", transform=axis.transAxes, ha="center", va="center")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    if rss_fit and rss_fit.get("slope_mib_per_h") is not None and rss:
        start_s, start_mib = rss_fit["fit_start_s"], rss_fit["fit_start_mib"]
        end_s = max(t for t, _ in rss if rss_fit["fit_start_s"] <= t)
        end_s = min(end_s, start_s + rss_fit["window_s"])
        slope = rss_fit["slope_mib_per_h"]
        axes[0].plot(
            [start_s, end_s],
            [start_mib, start_mib + slope * (end_s - start_s) / 3600.0],
            linestyle="--",
            label=f"fit after warm-up: {slope:+.1f} MiB/h ({rss_fit['verdict']})",
        )
        axes[0].legend(loc="lower right")
    end_of_load = next((s.t_s for s in samples if s.phase != "load"), None)
    for axis in axes:
        if end_of_load is not None:
            axis.axvline(end_of_load, color="grey", linestyle=":", linewidth=1)
    axes[2].set_xlabel("seconds since the load started (dotted: load stopped)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
