"""``hami simulate``: run the scheduling core over Node and Pod manifests, offline.

Pods that already carry ``spec.nodeName`` and ``hami.io/vgpu-devices-allocated`` are running and
count as usage; every other pod is scheduled in file order, each decision updating the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hami.devices.registry import BackendRegistry
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import decode_pod_devices
from hami.protocol.shape import check_pod
from hami.scheduling.decide import Scheduler


@dataclass(frozen=True, slots=True)
class SimulationResult:
    placements: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"placements": self.placements, "nodes": self.nodes}


def simulate(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    *,
    registry: BackendRegistry,
    node_policy: str,
    gpu_policy: str,
    now: int = 0,
) -> SimulationResult:
    sched = Scheduler(registry, node_policy=node_policy, gpu_policy=gpu_policy)
    warnings: list[str] = []
    for node in nodes:
        error = sched.observe_node(node)
        if error:
            warnings.append(error)
    warnings.extend(w for ws in sched.node_warnings.values() for w in ws)
    placements: list[dict[str, Any]] = []
    for pod in pods:
        try:
            check_pod(pod)
        except ProtocolError as exc:
            warnings.append(f"pod {_name(pod)}: ignored: {exc}")
            continue
        key = f"{bodies.namespace(pod) or 'default'}/{bodies.meta(pod).get('name')}"
        bound = bodies.node_name(pod)
        if bound:
            try:
                alloc = sched.allocation_of(pod, str(bound))
            except ProtocolError as exc:
                warnings.append(f"pod {key}: ignored, its allocation annotation is corrupt: {exc}")
                continue
            if alloc is not None:
                sched.state.add_pod(alloc)
            continue
        d = sched.decide(pod, now=now)
        placements.append({"pod": d.pod, "node": d.node, "annotations": d.annotations, "reason": d.reason})
    node_out = []
    for name in sorted(sched.state.nodes):
        n = sched.state.nodes[name]
        node_out.append(
            {
                "name": name,
                "devices": [
                    {
                        "uuid": c.uuid,
                        "type": c.type,
                        "used": c.used,
                        "count": c.count,
                        "usedmem": c.usedmem,
                        "totalmem": c.totalmem,
                        "usedcores": c.usedcores,
                        "totalcores": c.totalcores,
                    }
                    for c in sorted(n.cards, key=lambda c: (c.index, c.uuid))
                ],
            }
        )
    return SimulationResult(placements=placements, nodes=node_out, warnings=warnings)


def _is_allocation(key: str) -> bool:
    """Every vendor's allocated-devices annotation: ``hami.io/vgpu-devices-allocated``,
    ``hami.io/dcu-devices-allocated``, ``hami.io/kunlun-allocated``, ... (HAMi's pod device encoding)."""
    return key.startswith("hami.io/") and key.endswith("-allocated")


def _name(pod: Any) -> str:
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def render_table(result: SimulationResult) -> str:
    lines = [f"{'POD':<32} {'NODE':<16} DEVICES / REASON"]
    for p in result.placements:
        if p["node"]:
            text = " ".join(
                f"[{', '.join(f'{d.uuid} {d.usedmem}MiB {d.usedcores}%' for d in c)}]"
                for key, value in p["annotations"].items()
                if _is_allocation(key)
                for c in decode_pod_devices(value)
                if c
            )
        else:
            text = f"UNSCHEDULABLE: {p['reason']}"
        lines.append(f"{p['pod']:<32} {p['node'] or '-':<16} {text}")
    lines.append("")
    lines.append(f"{'NODE':<16} {'CARD':<24} {'TYPE':<20} {'SLOTS':>7} {'MEMORY (MiB)':>15} {'CORES':>9}")
    for n in result.nodes:
        for d in n["devices"]:
            lines.append(
                f"{n['name']:<16} {d['uuid']:<24} {d['type'][:20]:<20} {d['used']:>3}/{d['count']:<3} "
                f"{d['usedmem']:>7}/{d['totalmem']:<7} {d['usedcores']:>4}/{d['totalcores']:<4}"
            )
    return "\n".join(lines)
