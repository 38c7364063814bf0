"""Tenants: who a caller is (API key -> tenant) and what it may still start (per-tenant admission limits).

Ownership rule: every resource a route creates (a workflow, a streaming completion) is tagged with the tenant that
created it; lookups by another tenant answer 404, exactly like an unknown id, so ids leak nothing.
Admission: ``TenantUsage.admit`` reserves a program slot and tokens before work starts and the returned
``Admission`` releases them exactly once when the work ends (success, failure, cancel or a dropped client).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from fastapi import Request

from plait.server.config import DEFAULT_TENANT, ServerConfig, TenantLimits
from plait.server.errors import APIError

RETRY_AFTER_S = 1  # what 429 answers suggest; work finishes on the scale of seconds


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: TenantLimits


def authenticate(config: ServerConfig, authorization: str | None, api_key_header: str | None) -> Tenant:
    """The tenant of a request: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; 401 when keys are configured
    and the request has none or an unknown one."""
    if not config.auth_enabled:
        return Tenant(DEFAULT_TENANT, config.limits_for(DEFAULT_TENANT))
    key = api_key_header
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Authorization header must be 'Bearer <api key>'", field="Authorization")
        key = token.strip()
    if not key:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <api key>'", field="Authorization")
    tenant = config.api_keys.get(key)
    if tenant is None:
        raise APIError(401, "unknown API key", field="Authorization")
    return Tenant(tenant, config.limits_for(tenant))


def current_tenant(request: Request) -> Tenant:
    """FastAPI dependency: the calling tenant (raises 401)."""
    state = request.app.state.plait
    return authenticate(state.config, request.headers.get("authorization"), request.headers.get("x-api-key"))


class Admission:
    """A reservation of one program slot and ``tokens`` queued tokens; ``release()`` is idempotent."""

    def __init__(self, usage: TenantUsage, tenant: str, tokens: int) -> None:
        self._usage = usage
        self.tenant = tenant
        self.tokens = tokens
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._usage._release(self.tenant, self.tokens)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class TenantUsage:
    """Running programs and queued tokens per tenant (thread-safe: releases may come from callbacks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._programs: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    def admit(self, tenant: Tenant, tokens: int) -> Admission:
        """Reserve a program slot and ``tokens``; 429 with ``Retry-After`` when either limit would be exceeded."""
        limits = tenant.limits
        if tokens > limits.max_queued_tokens:
            raise APIError(
                400,
                f"request needs {tokens} tokens (prompt + max_tokens), over the tenant's limit of "
                f"{limits.max_queued_tokens}; lower max_tokens or shorten the prompt",
                field="max_tokens",
            )
        with self._lock:
            programs = self._programs.get(tenant.name, 0)
            queued = self._tokens.get(tenant.name, 0)
            if programs + 1 > limits.max_concurrent_programs:
                raise _too_many(
                    f"tenant '{tenant.name}' has {programs} running programs (limit {limits.max_concurrent_programs})"
                )
            if queued + tokens > limits.max_queued_tokens:
                raise _too_many(
                    f"tenant '{tenant.name}' has {queued} queued tokens; {tokens} more exceed the limit of "
                    f"{limits.max_queued_tokens}"
                )
            self._programs[tenant.name] = programs + 1
            self._tokens[tenant.name] = queued + tokens
        return Admission(self, tenant.name, tokens)

    def _release(self, tenant: str, tokens: int) -> None:
        with self._lock:
            self._programs[tenant] = self._programs.get(tenant, 0) - 1
            self._tokens[tenant] = self._tokens.get(tenant, 0) - tokens

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """``{tenant: (running programs, queued tokens)}``."""
        with self._lock:
            return {name: (self._programs[name], self._tokens.get(name, 0)) for name in self._programs}


def _too_many(message: str) -> APIError:
    return APIError(
        429, message + "; retry later", type="rate_limit_error", headers={"Retry-After": str(math.ceil(RETRY_AFTER_S))}
    )
