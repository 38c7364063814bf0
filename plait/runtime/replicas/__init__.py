"""Scale-out: engine replicas (Ray actors, or engines in this process) behind one planner and API, with
program-affinity routing, failover of a lost replica's calls and live migration of a program with its KV.

Owns: which replica each call and each program command goes to. May import: ``engine`` and ``cache`` (public APIs).
"""

from __future__ import annotations

from plait.runtime.replicas.replica_config import REPLICA_BACKENDS, ROUTING_POLICIES, ReplicaConfig, ReplicatedEngine
from plait.runtime.replicas.replica_handles import ReplicaLostError
from plait.runtime.replicas.replica_router import ReplicaLoad, ReplicaRouter
from plait.runtime.replicas.replica_set import Migration, ReplicaSet, merge_stats

__all__ = [
    "REPLICA_BACKENDS",
    "ROUTING_POLICIES",
    "Migration",
    "ReplicaConfig",
    "ReplicaLoad",
    "ReplicaLostError",
    "ReplicaRouter",
    "ReplicaSet",
    "ReplicatedEngine",
    "merge_stats",
]
