"""Device-aware preemption: which of the victims kube-scheduler proposes really free the right cards.

kube-scheduler's DefaultPreemption chooses victims per node with its in-tree plugins, which do not
see device memory, cores or which card a pod holds (hami's resources are ``ignoredByScheduler``).
It then asks the extender (``preemptVerb``) to check those victims. For each node the answer is
simulated on the real ledger, never guessed:

* the victims are taken off the node (:meth:`ClusterState.without`, restored before returning, with
  no ``await`` in between) and the pod is fitted with the real fit, policy and quota check
  (:meth:`Scheduler.decide` with ``reserve=False``) on that node alone;
* the pod fits the node's cards already, without any eviction: the devices are not what blocks it,
  so kube-scheduler's victims are returned unchanged (they free what kube-scheduler needs);
* the pod does not fit even with every proposed victim gone: the node is left out of the answer
  (kube-scheduler then preempts nothing there);
* otherwise victims are *reprieved* one at a time, highest priority first (ties: the uid, for a
  stable answer), and stay only if the pod no longer fits without evicting them; the result is
  minimal by priority, then by count (no victim can be dropped from it). Victims that hold no hami
  device are kept: they were proposed for resources only kube-scheduler sees.

Quota follows from the simulation: a victim in the preemptor's namespace discharges its quota
while it is off the ledger, a victim elsewhere frees cards but no quota of the preemptor's
namespace, so a preemption never lets a namespace exceed its quota.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.protocol import bodies
from hami.scheduling.decide import Scheduler, pod_key


def priority_of(pod: Mapping[str, Any] | None) -> int:
    """A pod's ``spec.priority`` (the API server sets it from the PriorityClass); 0 when missing."""
    value = bodies.spec(pod).get("priority") if pod is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _fits(scheduler: Scheduler, pod: Mapping[str, Any], node: str, gone: Sequence[str]) -> bool:
    with scheduler.state.without(gone):
        return scheduler.decide(pod, candidates=[node], reserve=False).node is not None


def node_victims(
    scheduler: Scheduler,
    pod: Mapping[str, Any],
    node: str,
    victims: Sequence[str],
    priorities: Mapping[str, int],
) -> list[str] | None:
    """The victims (uids) to evict on ``node`` so the pod fits its cards, or None when none do.

    ``priorities`` gives each victim's pod priority (missing: 0).
    """
    if node not in scheduler.state.nodes:
        return None
    uid = pod_key(pod)[0]
    mine = scheduler.state.pods.get(uid)
    try:
        if _fits(scheduler, pod, node, ()):
            return list(victims)
        if not _fits(scheduler, pod, node, victims):
            return None
        holding = [v for v in victims if v in scheduler.state.pods]
        kept = [v for v in victims if v not in scheduler.state.pods]
        needed = list(holding)
        for v in sorted(holding, key=lambda v: (-priorities.get(v, 0), v)):
            trial = [u for u in needed if u != v]
            if _fits(scheduler, pod, node, trial):
                needed = trial
        chosen = set(needed) | set(kept)
        return [v for v in victims if v in chosen]
    finally:
        # decide() drops the pod's own reservation first: put back whatever it held
        if mine is not None and scheduler.state.pods.get(uid) is not mine:
            scheduler.state.add_pod(mine)


def select_victims(
    scheduler: Scheduler,
    pod: Mapping[str, Any],
    proposed: Mapping[str, Sequence[str]],
    priorities: Mapping[str, int],
) -> dict[str, list[str]]:
    """Per node, the victims to evict (see :func:`node_victims`); nodes where none work are left out."""
    out: dict[str, list[str]] = {}
    for node, victims in proposed.items():
        chosen = node_victims(scheduler, pod, node, victims, priorities)
        if chosen:
            out[node] = chosen
    return out


def _key(chosen: Sequence[str], priorities: Mapping[str, int], node: str) -> tuple[int, int, int, str]:
    prios = [priorities.get(v, 0) for v in chosen]
    return (max(prios), len(chosen), sum(prios), node)


def plan_preemption(
    scheduler: Scheduler,
    pod: Mapping[str, Any],
    candidates: Mapping[str, Sequence[str]],
    priorities: Mapping[str, int],
) -> tuple[str, list[str]] | None:
    """Device-only preemption: the node and the victims (uids) to evict there so the pod fits its
    cards, or None when no eviction is needed or none would help.

    ``candidates`` maps each node the pod may go to (kube-scheduler found it fits everything else)
    to the pods there that *may* be evicted (the caller's rules: lower priority, bound, not already
    terminating). None when the pod already fits one of those nodes without evicting anyone.
    Per node the victims are :func:`node_victims`' (the real fit, quota included, minimal by
    priority then count); among nodes the plan whose highest victim priority is lowest wins, then
    the fewest victims, the lowest priority sum, the node name.
    """
    uid = pod_key(pod)[0]
    mine = scheduler.state.pods.get(uid)
    try:
        nodes = [n for n in candidates if n in scheduler.state.nodes]
        if nodes and scheduler.decide(pod, candidates=nodes, reserve=False).node is not None:
            return None
    finally:
        if mine is not None and scheduler.state.pods.get(uid) is not mine:
            scheduler.state.add_pod(mine)
    best: tuple[tuple[int, int, int, str], str, list[str]] | None = None
    for node in nodes:
        victims = candidates[node]
        if not victims:
            continue
        chosen = node_victims(scheduler, pod, node, victims, priorities)
        if not chosen:
            continue
        key = _key(chosen, priorities, node)
        if best is None or key < best[0]:
            best = (key, node, chosen)
    return None if best is None else (best[1], best[2])
