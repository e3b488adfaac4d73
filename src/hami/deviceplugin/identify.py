"""Which pod an Allocate is for (HAMi §2.6).

The kubelet's Allocate carries only replica IDs, so the pod is identified from the API server,
deterministically: the owner of the node lock (`hami.io/mutex.lock`) first, else the *single*
pod on this node waiting for allocation. Guarantees: read-only (nothing is written here); a pod
qualifies only while it is Pending, not being deleted, not bound to another node, annotated for
this node with bind-phase `allocating` and devices left in `hami.io/vgpu-devices-to-allocate`;
two qualifying pods and no lock owner among them is an `AllocationError`, never a guess.
"""

from __future__ import annotations

import logging

from hami.deviceplugin.kubeops import KubeOps, Obj
from hami.deviceplugin.server import AllocationError
from hami.devices.nvidia import NvidiaBackend
from hami.kube.errors import NotFoundError
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import decode_pod_devices

log = logging.getLogger(__name__)


def waits_for_allocation(pod: Obj, node_name: str) -> bool:
    """`pod` is one this node's Allocate may be for (see module doc). A to-allocate annotation
    that does not decode counts as waiting: Allocate then fails the pod with the decoding error."""
    ann = bodies.annotations(pod)
    spec_node = bodies.node_name(pod)
    if spec_node and spec_node != node_name:
        return False
    if ann.get(keys.VGPU_NODE) != node_name or ann.get(keys.BIND_PHASE) != keys.BIND_PHASE_ALLOCATING:
        return False
    if bodies.phase(pod) != "Pending" or bodies.is_deleting(pod):
        return False
    try:
        return any(decode_pod_devices(ann.get(keys.VGPU_DEVICES_TO_ALLOCATE, "")))
    except ProtocolError:
        return True  # reported (and failed) by allocate with the decoding error


async def find_pod(kube: KubeOps, node_name: str) -> Obj:
    """The pod being allocated on `node_name` (see module doc); AllocationError otherwise."""
    node = await kube.get_node(node_name)
    lock_value = bodies.annotations(node).get(NvidiaBackend.node_lock.key)
    if lock_value:
        try:
            lock = NvidiaBackend.node_lock.decode(lock_value)
        except ProtocolError as e:
            log.warning("node %s: unreadable node lock %r: %s", node_name, lock_value, e)
            lock = None
        if lock is not None and lock.namespace and lock.name:
            try:
                owner = await kube.get_pod(lock.namespace, lock.name)
            except NotFoundError:
                owner = None
            if owner is not None and waits_for_allocation(owner, node_name):
                return owner
            log.info("node lock owner %s/%s is not waiting for allocation", lock.namespace, lock.name)
    pods = [p for p in await kube.list_node_pods(node_name) if waits_for_allocation(p, node_name)]
    if len(pods) == 1:
        return pods[0]
    if not pods:
        raise AllocationError(
            f"no pod on node {node_name} is waiting for GPU allocation "
            f"({keys.BIND_PHASE}={keys.BIND_PHASE_ALLOCATING} with devices left in "
            f"{keys.VGPU_DEVICES_TO_ALLOCATE})"
        )
    names = ", ".join(sorted(bodies.pod_key(p) for p in pods))
    raise AllocationError(
        f"{len(pods)} pods on node {node_name} are waiting for GPU allocation ({names}) and none "
        "holds the node lock; refusing to guess which one the kubelet is admitting"
    )
