"""The pure scheduling core: requests, the usage ledger, fit, scoring and decisions. No I/O, no clocks."""

from hami.scheduling.decide import Decision, Scheduler
from hami.scheduling.requests import ContainerRequest, PodRequest, pod_requests
from hami.scheduling.state import ClusterState, NodeState, PodAllocation

__all__ = [
    "ClusterState",
    "ContainerRequest",
    "Decision",
    "NodeState",
    "PodAllocation",
    "PodRequest",
    "Scheduler",
    "pod_requests",
]
