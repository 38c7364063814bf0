"""Server settings: address, API keys and their tenants, request limits, server-side tools, durability.

Read from a JSON or TOML file (``plait serve --config``) and the environment (``PLAIT_API_KEYS``); every bad value
raises ``ValueError`` naming the setting, so a misconfigured server never starts.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

API_KEYS_ENV = "PLAIT_API_KEYS"  # "key1=tenant-a,key2=tenant-b"
DEFAULT_TENANT = "default"  # everyone's tenant when no API keys are configured


@dataclass
class TenantLimits:
    """Per-tenant admission limits; over a limit the server answers 429 with ``Retry-After``."""

    max_concurrent_programs: int = 64  # running workflows (and OpenAI requests carrying a program_id count once)
    max_queued_tokens: int = 262_144  # prompt + max_tokens of the tenant's requests not yet finished

    def validate(self, where: str) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{where}.{f.name}: must be >= 1, got {getattr(self, f.name)}")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # API key -> tenant name. Empty: no authentication, every caller is the tenant "default".
    api_keys: dict[str, str] = field(default_factory=dict)
    limits: TenantLimits = field(default_factory=TenantLimits)
    tenant_limits: dict[str, TenantLimits] = field(default_factory=dict)  # overrides per tenant
    max_body_bytes: int = 4 * 1024 * 1024
    max_nodes_per_workflow: int = 1024
    max_prompt_tokens: int = 0  # 0: the engine's context window
    tools: list[str] = field(default_factory=list)  # server-side tools as "module:attr" or "file.py:attr"
    model_name: str = ""  # the id /v1/models reports; empty: derived from the engine's model
    shutdown_grace_s: float = 10.0  # on shutdown, running work gets this long to finish before it is cancelled
    # Client-side tools of REST workflows: the longest a call waits for its result (a workflow may ask for less).
    # Meanwhile the planner's tool pins keep the program's KV, as for any tool.
    client_tool_timeout_s: float = 300.0
    # The most seconds an OpenAI-API request may run, queueing included (0 = no limit; a request may ask for less
    # with its own max_request_time_s). When it passes, the engine request is aborted (its KV freed) and the answer
    # ends as at max_tokens: the text so far with finish_reason "length" (the whole response is still a 200, and a
    # stream ends with that chunk and [DONE]) -- an error status would make the openai client retry the request.
    max_request_time_s: float = 600.0
    # An agent program on the OpenAI API ends after this long without a call running (its pins, reservations and
    # engine bookkeeping are released then; DELETE /v1/programs/{id} ends it at once).
    program_idle_timeout_s: float = 300.0
    # Durability: accepted REST workflows and every finished step's output are journaled (SQLite) in data_dir before
    # anything depends on them, and the workflows a crash or a restart interrupted resume when the server starts
    # again (plait/server/workflows/durability.py). ``plait serve`` opens the journal; an in-process server
    # (``build_state``) runs without one unless ``durability.open_journal`` is called.
    journal: bool = True
    data_dir: str = "plait-data"
    # Finished workflows stay in the journal (status, events, idempotent retries) this long, then are deleted.
    retain_finished_s: float = 7 * 24 * 3600.0

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.tenant_limits.get(tenant, self.limits)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in 0..65535, got {self.port}")
        for name in ("max_body_bytes", "max_nodes_per_workflow"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.client_tool_timeout_s > 0:
            raise ValueError(f"client_tool_timeout_s: must be > 0, got {self.client_tool_timeout_s}")
        if not 0 <= self.max_request_time_s < float("inf"):
            raise ValueError(f"max_request_time_s: must be >= 0 (0 = no limit), got {self.max_request_time_s}")
        if not 0 < self.program_idle_timeout_s < float("inf"):
            raise ValueError(f"program_idle_timeout_s: must be > 0, got {self.program_idle_timeout_s}")
        if not 0 < self.retain_finished_s < float("inf"):
            raise ValueError(f"retain_finished_s: must be > 0 seconds, got {self.retain_finished_s}")
        if self.journal and not self.data_dir:
            raise ValueError("data_dir: must name a directory when the journal is on (or set journal = false)")
        if self.max_prompt_tokens < 0:
            raise ValueError(f"max_prompt_tokens: must be >= 0 (0 = the context window), got {self.max_prompt_tokens}")
        for key, tenant in self.api_keys.items():
            if not key or not tenant:
                raise ValueError("api_keys: every entry needs a non-empty key and tenant name")
        self.limits.validate("limits")
        for tenant, limits in self.tenant_limits.items():
            limits.validate(f"tenant_limits.{tenant}")

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, environ: dict[str, str] | None = None, **overrides: Any
    ) -> ServerConfig:
        """Settings from ``path`` (JSON or TOML; optional), then ``PLAIT_API_KEYS``, then ``overrides`` (not None)."""
        raw: dict[str, Any] = {}
        if path is not None:
            raw = _read_file(Path(path))
        config = cls.from_dict(raw)
        env = os.environ if environ is None else environ
        if env.get(API_KEYS_ENV):
            config.api_keys.update(parse_api_keys(env[API_KEYS_ENV]))
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(raw)
        if "limits" in values:
            values["limits"] = _limits(values["limits"], "limits")
        if "tenant_limits" in values:
            values["tenant_limits"] = {
                name: _limits(v, f"tenant_limits.{name}") for name, v in dict(values["tenant_limits"]).items()
            }
        return cls(**values)


def parse_api_keys(text: str) -> dict[str, str]:
    """``"key1=tenant-a,key2=tenant-b"`` -> ``{"key1": "tenant-a", "key2": "tenant-b"}``."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, tenant = item.partition("=")
        if not sep or not key.strip() or not tenant.strip():
            hint = " (the separator is '=', not ':')" if not sep and ":" in item else ""
            raise ValueError(f"{API_KEYS_ENV}: '{item}' is not KEY=TENANT{hint}")
        keys[key.strip()] = tenant.strip()
    return keys


def _limits(raw: Any, where: str) -> TenantLimits:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table of limits, got {type(raw).__name__}")
    known = {f.name for f in fields(TenantLimits)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return TenantLimits(**raw)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected an object of settings")
    return data
