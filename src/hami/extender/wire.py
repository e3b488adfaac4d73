"""kube-scheduler extender wire types (``k8s.io/kube-scheduler/extender/v1``).

The Go structs carry no JSON tags, so keys are Go field names (``Pod``, ``NodeNames``...) and Go
decodes them case-insensitively. We read keys case-insensitively and always write Go field names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.shape import check_node, check_pod


class WireError(ValueError):
    """A request body does not have the shape kube-scheduler sends."""


def _ci_get(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


def _all_strings(values: list[Any]) -> bool:
    """Every item is a ``str`` (checked at C speed: kube-scheduler sends hundreds of names per filter)."""
    return set(map(type, values)) <= {str}


def _check(check: Callable[[object], None], obj: object, where: str) -> None:
    try:
        check(obj)
    except ProtocolError as exc:
        raise WireError(f"{where}.{exc}") from None


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    pod: dict[str, Any]
    node_names: list[str]
    #: the Node objects, when kube-scheduler sent ``Nodes`` (``nodeCacheCapable: false``)
    nodes: list[dict[str, Any]] | None = None

    @classmethod
    def parse(cls, body: Any) -> ExtenderArgs:
        if not isinstance(body, Mapping):
            raise WireError("ExtenderArgs must be a JSON object")
        pod = _ci_get(body, "Pod")
        if not isinstance(pod, dict) or not isinstance(pod.get("metadata"), dict):
            raise WireError("ExtenderArgs.Pod must be a Pod object with metadata")
        _check(check_pod, pod, "ExtenderArgs.Pod")
        names = _ci_get(body, "NodeNames")
        objects: list[dict[str, Any]] | None = None
        if names is None:
            node_list = _ci_get(body, "Nodes")
            if node_list is None:
                node_list = {}
            if not isinstance(node_list, Mapping):
                raise WireError("ExtenderArgs.Nodes must be a NodeList object")
            items = _ci_get(node_list, "items") or []
            if not isinstance(items, list) or not all(isinstance(n, dict) for n in items):
                raise WireError("ExtenderArgs.Nodes.items must be a list of Node objects")
            for i, n in enumerate(items):
                _check(check_node, n, f"ExtenderArgs.Nodes.items[{i}]")
            objects = items
            names = [bodies.name(n) for n in items]
            if not all(isinstance(n, str) and n for n in names):
                raise WireError("ExtenderArgs.Nodes.items: every Node needs metadata.name")
        if not isinstance(names, list) or not _all_strings(names):
            raise WireError("ExtenderArgs.NodeNames must be a list of node names")
        uid = pod["metadata"].get("uid")
        if not isinstance(uid, str) or not uid:
            # the reservation a decision makes is keyed by uid: without one it could never be freed
            raise WireError("ExtenderArgs.Pod.metadata.uid must be a non-empty string")
        return cls(pod=pod, node_names=names, nodes=objects)


@dataclass(frozen=True, slots=True)
class BindingArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @classmethod
    def parse(cls, body: Any) -> BindingArgs:
        if not isinstance(body, Mapping):
            raise WireError("ExtenderBindingArgs must be a JSON object")
        values = {}
        for key in ("PodName", "PodNamespace", "PodUID", "Node"):
            v = _ci_get(body, key)
            if not isinstance(v, str) or not v:
                raise WireError(f"ExtenderBindingArgs.{key} must be a non-empty string")
            values[key] = v
        return cls(values["PodName"], values["PodNamespace"], values["PodUID"], values["Node"])


@dataclass(frozen=True, slots=True)
class PreemptionArgs:
    """``ExtenderPreemptionArgs``: the preemptor and, per node, the victims kube-scheduler proposes.

    With ``nodeCacheCapable`` kube-scheduler sends ``NodeNameToMetaVictims`` (victims by
    ``{"UID": ...}`` only), otherwise ``NodeNameToVictims`` (whole Pod objects); both end up here
    as victim uids per node, with ``NumPDBViolations``. ``victim_pods`` holds the Pod objects when
    they were sent (by uid).
    """

    pod: dict[str, Any]
    #: node -> victim uids, in kube-scheduler's order
    victims: dict[str, list[str]]
    #: node -> NumPDBViolations as kube-scheduler counted them
    pdb_violations: dict[str, int]
    victim_pods: dict[str, dict[str, Any]]

    @classmethod
    def parse(cls, body: Any) -> PreemptionArgs:
        where = "ExtenderPreemptionArgs"
        if not isinstance(body, Mapping):
            raise WireError(f"{where} must be a JSON object")
        pod = _ci_get(body, "Pod")
        if not isinstance(pod, dict) or not isinstance(pod.get("metadata"), dict):
            raise WireError(f"{where}.Pod must be a Pod object with metadata")
        _check(check_pod, pod, f"{where}.Pod")
        meta = _ci_get(body, "NodeNameToMetaVictims")
        full = _ci_get(body, "NodeNameToVictims")
        key, by_node = ("NodeNameToMetaVictims", meta) if meta is not None else ("NodeNameToVictims", full)
        if by_node is None:
            by_node = {}
        if not isinstance(by_node, Mapping):
            raise WireError(f"{where}.{key} must be an object of node name to victims")
        victims: dict[str, list[str]] = {}
        pdb: dict[str, int] = {}
        pods: dict[str, dict[str, Any]] = {}
        for node, entry in by_node.items():
            at = f"{where}.{key}[{node}]"
            if not isinstance(node, str) or not node:
                raise WireError(f"{where}.{key}: node names must be non-empty strings")
            if entry is None:
                entry = {}
            if not isinstance(entry, Mapping):
                raise WireError(f"{at} must be an object")
            items = _ci_get(entry, "Pods")
            if items is None:
                items = []
            if not isinstance(items, list):
                raise WireError(f"{at}.Pods must be a list")
            uids: list[str] = []
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise WireError(f"{at}.Pods[{i}] must be an object")
                if key == "NodeNameToMetaVictims":
                    uid = _ci_get(item, "UID")
                else:
                    _check(check_pod, item, f"{at}.Pods[{i}]")
                    uid = bodies.uid(item)
                if not isinstance(uid, str) or not uid:
                    raise WireError(f"{at}.Pods[{i}] needs a non-empty UID")
                if key == "NodeNameToVictims":
                    pods[uid] = dict(item)
                uids.append(uid)
            violations = _ci_get(entry, "NumPDBViolations")
            if violations is None:
                violations = 0
            if not isinstance(violations, int) or isinstance(violations, bool) or violations < 0:
                raise WireError(f"{at}.NumPDBViolations must be a non-negative integer")
            victims[node] = uids
            pdb[node] = violations
        return cls(pod=pod, victims=victims, pdb_violations=pdb, victim_pods=pods)


def preemption_result(victims: Mapping[str, list[str]], pdb_violations: Mapping[str, int]) -> dict[str, Any]:
    """``ExtenderPreemptionResult``: always ``NodeNameToMetaVictims`` (kube-scheduler reads only that)."""
    return {
        "NodeNameToMetaVictims": {
            node: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": pdb_violations.get(node, 0)}
            for node, uids in victims.items()
        }
    }


def filter_result(
    *,
    node_names: list[str] | None,
    failed: Mapping[str, str] | None = None,
    error: str = "",
    nodes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``ExtenderFilterResult`` with Go field names.

    ``Nodes`` is null in node-cache-capable mode. Without ``nodeCacheCapable`` kube-scheduler reads
    only ``Nodes`` (it ignores ``NodeNames``), so pass the chosen Node objects as ``nodes`` then.
    """
    return {
        "Nodes": None if nodes is None else {"metadata": {}, "items": nodes},
        "NodeNames": node_names,
        "FailedNodes": dict(failed or {}),
        "FailedAndUnresolvableNodes": {},
        "Error": error,
    }


def priority_result(scores: Mapping[str, int]) -> list[dict[str, Any]]:
    """``HostPriorityList`` (Go field names: the type has no JSON tags)."""
    return [{"Host": node, "Score": score} for node, score in scores.items()]


def binding_result(error: str = "") -> dict[str, Any]:
    return {"Error": error}
