"""kube-scheduler extender wire types (``k8s.io/kube-scheduler/extender/v1``).

The Go structs carry no JSON tags, so keys are Go field names (``Pod``, ``NodeNames``...) and Go
decodes them case-insensitively. We read keys case-insensitively and always write Go field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    pod: dict[str, Any]
    node_names: list[str]

    @classmethod
    def parse(cls, body: Any) -> ExtenderArgs:
        if not isinstance(body, Mapping):
            raise WireError("ExtenderArgs must be a JSON object")
        pod = _ci_get(body, "Pod")
        if not isinstance(pod, dict) or not isinstance(pod.get("metadata"), dict):
            raise WireError("ExtenderArgs.Pod must be a Pod object with metadata")
        names = _ci_get(body, "NodeNames")
        if names is None:
            nodes = _ci_get(body, "Nodes") or {}
            items = nodes.get("items") if isinstance(nodes, Mapping) else None
            names = [((n or {}).get("metadata") or {}).get("name") for n in (items or [])]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise WireError("ExtenderArgs.NodeNames must be a list of node names")
        return cls(pod=pod, node_names=names)


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


def filter_result(
    *, node_names: list[str] | None, failed: Mapping[str, str] | None = None, error: str = ""
) -> dict[str, Any]:
    """``ExtenderFilterResult`` with Go field names; ``Nodes`` is null in node-cache-capable mode."""
    return {
        "Nodes": None,
        "NodeNames": node_names,
        "FailedNodes": dict(failed or {}),
        "FailedAndUnresolvableNodes": {},
        "Error": error,
    }


def binding_result(error: str = "") -> dict[str, Any]:
    return {"Error": error}
