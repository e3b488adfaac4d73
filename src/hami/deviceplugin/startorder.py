"""Which container of a pod a PreStartContainer is for, from the pod's spec and status alone.

PodResources names the listed containers holding a PreStart's device IDs (`podresources`), but
not the regular init containers: the kubelet hands an init container's IDs again to the app (or
later init) container after it, so one ID set can belong to several containers of one pod, one at
a time. The kubelet starts regular init containers one by one in spec order, each only after the
one before it exited 0, and the app containers only after all of them; `starting_container`
applies that order to the pod's `status.initContainerStatuses`.

Guarantees: pure; never a guess. It returns a container name only when the evidence allows one
container; `Wait` when the status still shows a state the kubelet has already left behind (the
status reaches the API server after the kubelet acts), for the caller to re-read the pod, bounded;
`Ambiguous` when no amount of waiting will decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hami.protocol import bodies


@dataclass(frozen=True)
class Wait:
    """Re-read the pod: its status lags behind the kubelet (`reason` says how)."""

    reason: str


@dataclass(frozen=True)
class Ambiguous:
    """No container, or several, can be the one starting (`reason` says which)."""

    reason: str


def requested(container: Mapping[str, Any], resource: str) -> int:
    """The container's count of `resource` (limits, else requests); 0 when absent or unreadable."""
    res = container.get("resources") or {}
    for section in ("limits", "requests"):
        value = (res.get(section) or {}).get(resource)
        if value is not None:
            try:
                return int(str(value))
            except ValueError:
                return 0
    return 0


def _state(pod: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for st in bodies.init_container_statuses(pod):
        if st.get("name") == name:
            return st.get("state") or {}
    return {}


def _exited_ok(pod: Mapping[str, Any], name: str) -> bool:
    term = _state(pod, name).get("terminated")
    return term is not None and term.get("exitCode") == 0


def starting_container(
    pod: Mapping[str, Any], listed: Sequence[str], resource: str, count: int
) -> str | Wait | Ambiguous:
    """The container of `pod` whose PreStart carries `count` IDs of `resource` that the listed
    containers `listed` (PodResources: app containers and sidecars) hold exactly — or a regular
    init container asking for `count` of `resource`, whose IDs PodResources does not show."""
    regular = [c for c in bodies.init_containers(pod) if not bodies.is_sidecar(c)]
    regular_names = [str(c.get("name")) for c in regular]
    gpu_inits = [str(c.get("name")) for c in regular if requested(c, resource) == count]
    others = [n for n in listed if n not in regular_names]
    candidates = gpu_inits + others
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        return Ambiguous(f"no container of the pod asks for {count} {resource}")
    pending = [n for n in gpu_inits if not _exited_ok(pod, n)]
    if pending:
        first = pending[0]
        before = regular_names[: regular_names.index(first)]
        unfinished = [n for n in before if not _exited_ok(pod, n)]
        if unfinished:
            return Wait(f"init container {unfinished[0]!r} has not exited 0 yet, so {first!r} cannot start")
        if "running" in _state(pod, first):
            return Wait(f"init container {first!r} still shows running")
        return first
    if len(others) == 1:
        return others[0]
    if not others:
        return Ambiguous(
            f"every init container asking for {count} {resource} has exited 0 and no other container holds the IDs"
        )
    return Ambiguous(f"containers {others} all hold the same IDs")
