"""Prometheus metrics on a registry of the server's own (so several apps in one process never collide).

Request latencies are observed by the routes (``observe_generation``); engine and program gauges are read at
scrape time (``refresh``) from ``Engine.stats()`` and the executor, so they are never stale.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.ttft = Histogram(
            "plait_time_to_first_token_seconds",
            "Time to first token",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "plait_time_per_output_token_seconds",
            "Mean time per output token after the first",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.e2e = Histogram(
            "plait_request_duration_seconds",
            "End-to-end request time",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter("plait_requests", "HTTP requests answered", ["endpoint", "status"], registry=registry)
        self.prompt_tokens = Counter("plait_prompt_tokens", "Prompt tokens of finished requests", registry=registry)
        self.completion_tokens = Counter("plait_completion_tokens", "Generated tokens", registry=registry)
        self.queue_depth = Gauge("plait_queue_depth", "Engine requests waiting", registry=registry)
        self.running = Gauge("plait_running_requests", "Engine requests running", registry=registry)
        self.kv_usage = Gauge("plait_kv_usage_ratio", "KV slots held by requests / total", registry=registry)
        self.kv_cached = Gauge("plait_kv_cached_slots", "KV slots kept by the prefix cache", registry=registry)
        self.prefix_hit = Gauge(
            "plait_prefix_cache_hit_ratio",
            "Prompt tokens served from the prefix cache / prompt tokens",
            registry=registry,
        )
        # Running totals since the engine started (gauges read from the engine): differences over a benchmark give its
        # own prefix hit rate (`plait bench replay --target`).
        self.prefill_tokens = Gauge("plait_prefill_tokens", "Prompt tokens computed since start", registry=registry)
        self.cached_prompt_tokens = Gauge(
            "plait_cached_prompt_tokens", "Prompt tokens served from the prefix cache since start", registry=registry
        )
        self.programs = Gauge("plait_programs", "Programs by state", ["state"], registry=registry)
        # Scale-out (``plait serve --replicas``): each replica's load and the programs bound to it.
        self.replica_waiting = Gauge("plait_replica_queue_depth", "Requests waiting", ["replica"], registry=registry)
        self.replica_running = Gauge("plait_replica_running_requests", "Running", ["replica"], registry=registry)
        self.replica_kv_usage = Gauge("plait_replica_kv_usage_ratio", "KV in use", ["replica"], registry=registry)
        self.replica_bound = Gauge("plait_replica_bound_programs", "Programs bound", ["replica"], registry=registry)

    def observe_generation(
        self, endpoint: str, *, ttft_s: float | None, e2e_s: float, completion_tokens: int, prompt_tokens: int
    ) -> None:
        """Record one finished generation (TPOT is the mean gap between tokens after the first)."""
        if ttft_s is not None:
            self.ttft.labels(endpoint).observe(ttft_s)
            if completion_tokens > 1:
                self.tpot.labels(endpoint).observe(max(0.0, e2e_s - ttft_s) / (completion_tokens - 1))
        self.e2e.labels(endpoint).observe(e2e_s)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)

    def refresh(self, state: object) -> None:
        """Read the engine's and the executor's current state into the gauges (nothing while the engine loads)."""
        if not state.loaded:  # type: ignore[attr-defined]
            return
        stats = state.engine.stats()  # type: ignore[attr-defined]
        self.queue_depth.set(stats.waiting)
        self.running.set(stats.running)
        self.kv_usage.set(stats.kv_usage)
        self.kv_cached.set(stats.kv_slots_cached)
        computed = stats.prefill_tokens + stats.cached_prefix_tokens + stats.host_hit_tokens
        self.prefix_hit.set((stats.cached_prefix_tokens + stats.host_hit_tokens) / computed if computed else 0.0)
        self.prefill_tokens.set(stats.prefill_tokens)
        self.cached_prompt_tokens.set(stats.cached_prefix_tokens + stats.host_hit_tokens)
        describe = getattr(state.engine, "describe_replicas", None)  # type: ignore[attr-defined]
        for replica in describe()["replicas"] if describe is not None else []:
            label = str(replica["index"])
            self.replica_waiting.labels(label).set(replica["waiting"])
            self.replica_running.labels(label).set(replica["running"])
            self.replica_kv_usage.labels(label).set(replica["kv_usage"])
            self.replica_bound.labels(label).set(replica["bound_programs"])
        counts: dict[str, int] = {"running": 0, "done": 0, "failed": 0, "cancelled": 0}
        for program in state.executor.programs.values():  # type: ignore[attr-defined]
            counts[program.state.value] = counts.get(program.state.value, 0) + 1
        for name, count in counts.items():
            self.programs.labels(name).set(count)

    def exposition(self, state: object) -> bytes:
        self.refresh(state)
        return generate_latest(self.registry)
