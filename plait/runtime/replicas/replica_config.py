"""The settings of a scale-out server: how many engine replicas, where they run, how calls are routed."""

from __future__ import annotations

from dataclasses import dataclass

from plait.engine import EngineConfig, InvalidRequestError

# program: a program's calls go to the replica that holds its KV; an unbound call to the replica with the longest
# cached prefix for it, unless the load guard says that replica is overloaded; then the least loaded.
# prefix: every call by the longest cached prefix (with the load guard). round-robin: in turn.
ROUTING_POLICIES = ("program", "prefix", "round-robin")
REPLICA_BACKENDS = ("ray", "local")


@dataclass(frozen=True)
class ReplicaConfig:
    """``replicas`` engines of the same ``EngineConfig`` behind one planner and API.

    ``backend``: ``ray`` runs each replica in a Ray actor (on ``ray_address``, or a Ray started here, and stopped
    with the server); ``local`` runs them in this process (one engine thread each), for machines without Ray.
    The load guard: a replica with more than ``max_waiting`` requests waiting, or more than ``max_kv_usage`` of its
    KV in use, is passed over by prefix routing (a bound program stays where its KV is).
    """

    replicas: int = 2
    routing: str = "program"
    backend: str = "ray"
    ray_address: str | None = None
    max_waiting: int = 32
    max_kv_usage: float = 0.95

    def validate(self) -> None:
        """Raises ``InvalidRequestError`` naming the first bad field."""
        if self.replicas < 1:
            raise InvalidRequestError("replicas", f"must be >= 1, got {self.replicas}")
        if self.routing not in ROUTING_POLICIES:
            raise InvalidRequestError("routing", f"'{self.routing}': choose one of {', '.join(ROUTING_POLICIES)}")
        if self.backend not in REPLICA_BACKENDS:
            raise InvalidRequestError("backend", f"'{self.backend}': choose one of {', '.join(REPLICA_BACKENDS)}")
        if self.max_waiting < 0:
            raise InvalidRequestError("max_waiting", f"must be >= 0, got {self.max_waiting}")
        if not 0.0 < self.max_kv_usage <= 1.0:
            raise InvalidRequestError("max_kv_usage", f"must be in (0, 1], got {self.max_kv_usage}")
        if self.ray_address is not None and self.backend != "ray":
            raise InvalidRequestError("ray_address", "a Ray address needs the ray backend")


@dataclass(frozen=True)
class ReplicatedEngine:
    """What ``open_engine`` starts a ``ReplicaSet`` from: each replica's engine settings and the scale-out's."""

    engine: EngineConfig
    replicas: ReplicaConfig
