"""The ``kv_hints`` envelope: a client's explicit retention advice for its program's KV.

The shape follows the KV-hints envelope request-level engines accept (a version and a list of typed actions), so an
orchestrator written for them works here::

    "kv_hints": {"version": 1, "actions": [{"type": "retain", "ttl_s": 30}]}

Actions: ``retain`` keeps the program's KV resident for ``ttl_s`` seconds after this call ends (a pin, within the
engine's pin budget, in place of the one the planner would choose); ``release`` says it will not be needed soon (it
is unpinned and evicted first); ``prefetch`` brings it back from the host tier now. On a generation request the
actions apply to that request's program; ``POST /v1/programs/{id}/kv_hints`` applies them at once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from plait.server.errors import APIError

MAX_RETAIN_S = 3600.0


class KVHintAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["retain", "release", "prefetch"] = Field(description="`retain`, `release` or `prefetch`.")
    ttl_s: float | None = Field(
        None, gt=0.0, le=MAX_RETAIN_S, description="With `retain`: seconds to keep the KV after the call ends."
    )


class KVHintsEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(1, description="The envelope's version (1).")
    actions: list[KVHintAction] = Field(min_length=1, max_length=8, description="What to do with the program's KV.")


class KVHints:
    """What an envelope asks for, checked: at most one of ``retain`` and ``release``; ``retain`` with ``ttl_s``."""

    def __init__(self, retain_s: float | None = None, release: bool = False, prefetch: bool = False) -> None:
        self.retain_s = retain_s
        self.release = release
        self.prefetch = prefetch

    @classmethod
    def parse(cls, envelope: KVHintsEnvelope | None, field: str = "kv_hints") -> KVHints | None:
        """The hints of ``envelope`` (None for none); ``APIError`` 400 naming the action's field when they conflict."""
        if envelope is None:
            return None
        hints = cls()
        for i, action in enumerate(envelope.actions):
            where = f"{field}.actions[{i}]"
            if action.type == "retain":
                if action.ttl_s is None:
                    raise APIError(400, "`retain` needs `ttl_s` (seconds to keep the KV)", field=f"{where}.ttl_s")
                hints.retain_s = action.ttl_s
            elif action.ttl_s is not None:
                raise APIError(400, f"`ttl_s` applies to `retain` only, not `{action.type}`", field=f"{where}.ttl_s")
            elif action.type == "release":
                hints.release = True
            else:
                hints.prefetch = True
        if hints.release and hints.retain_s is not None:
            raise APIError(400, "`retain` and `release` contradict each other: send one", field=f"{field}.actions")
        return hints
