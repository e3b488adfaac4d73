"""DRA-mode fake nodes for tests and benchmarks: ResourceSlices in the DRA kubelet plugin's format.

A DRA-mode node is a Node labelled ``hami.io/operating-mode=dra`` that advertises no
``nvidia.com/gpu``, plus one ResourceSlice (driver ``hami-core-gpu.project-hami.io``, pool = the
node's name) listing its cards as devices ``gpu-<index>`` with the attributes ``uuid``, ``index``,
``numaNode``, ``productName``, ``type`` (``gpu``) and the consumable capacities ``memory`` (MiB, as a quantity; a
request naming none takes the whole card) and ``cores`` (100; a request naming none takes 0), each
allowing multiple allocations — the contract of ``docs/dra.md`` ("Slice format"). The cards come from the same inventory
:func:`hami.testing.gpucluster.gpu_cards` builds for device-plugin nodes, so one test can switch a
node between the modes. :data:`DRA_GATES` are the feature gates the control plane needs (Kubernetes
1.34: consumable capacity is alpha).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.base import DeviceSource
from hami.draplugin.kubeops import DraKube
from hami.draplugin.runner import DraNodePlugin
from hami.draplugin.slices import consumable_capacity, device_class, device_name, mig_device_class
from hami.kube.client import KubeClient
from hami.kube.errors import AlreadyExistsError
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.protocol.dra import RESOURCE_API
from hami.protocol.node import DeviceInfo
from hami.testing.controlplane import DRA_FEATURE_GATES, feature_gates_flag
from hami.testing.gpucluster import create_node
from hami.webhook.mutate import WebhookPolicy, mutate_pod
from hami.webhook.runner import api_creator

__all__ = [
    "DRA_GATES",
    "RESOURCE_API",
    "SANDBOX_DEVICES",
    "claim_body",
    "converted_pod",
    "create_converted_pod",
    "create_device_class",
    "create_dra_node",
    "device_class",
    "dra_plugin_in",
    "mig_device_class",
    "mig_fake_source_spec",
    "resource_slice",
    "serving",
]

#: kube-apiserver, kube-scheduler and kube-controller-manager flags for consumable capacity and
#: partitionable devices
DRA_GATES = tuple(feature_gates_flag(DRA_FEATURE_GATES))


def resource_slice(node: str, cards: Sequence[DeviceInfo], *, generation: int = 1) -> dict[str, Any]:
    """The node's ResourceSlice (one per node, pool = node name)."""
    devices = [
        {
            "name": device_name(c.index),
            "attributes": {
                keys.DRA_ATTR_UUID: {"string": c.id},
                keys.DRA_ATTR_INDEX: {"int": c.index},
                keys.DRA_ATTR_NUMA_NODE: {"int": c.numa},
                keys.DRA_ATTR_PRODUCT_NAME: {"string": c.type},
                keys.DRA_ATTR_TYPE: {"string": keys.DRA_TYPE_GPU},
            },
            "capacity": consumable_capacity(c.devmem, c.devcore),
            "allowMultipleAllocations": True,
        }
        for c in cards
    ]
    return {
        "apiVersion": RESOURCE_API,
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{keys.DRA_DRIVER}"},
        "spec": {
            "driver": keys.DRA_DRIVER,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "nodeName": node,
            "devices": devices,
        },
    }


#: the sandbox's simulated GPUs, whose MIG profile sets give MIG-capable fake cards their geometry
SANDBOX_DEVICES = Path(__file__).resolve().parents[3] / "examples" / "fake-sandbox.yaml"


def mig_fake_source_spec(*uuids: str, plain: Sequence[str] = ()) -> dict[str, Any]:
    """A :class:`~hami.deviceplugin.sources.fake.FakeSource` spec: MIG-capable A100-SXM4-40GB cards
    ``uuids`` with the sandbox's profiles (``examples/fake-sandbox.yaml``, ``a100-40gb``), then
    plain A100s ``plain``."""
    sets = yaml.safe_load(SANDBOX_DEVICES.read_text())["mig_profile_sets"]
    card = {"memory": 40960, "model": "NVIDIA A100-SXM4-40GB"}
    return {
        "mig_profile_sets": sets,
        "cards": [{"uuid": u, **card, "mig": True, "sm": 108, "mig_profiles": "a100-40gb"} for u in uuids]
        + [{"uuid": u, **card} for u in plain],
    }


def claim_body(
    name: str,
    *,
    device_class: str = keys.DRA_DEVICE_CLASS,
    memory: str | None = None,
    cores: str | None = None,
    selectors: Sequence[str] = (),
) -> dict[str, Any]:
    """A ResourceClaim with one request ``gpu`` for one device of ``device_class``: ``memory`` and
    ``cores`` as capacity requests when given, each CEL expression of ``selectors`` a selector."""
    exactly: dict[str, Any] = {"deviceClassName": device_class}
    wanted = {k: v for k, v in ((keys.DRA_CAPACITY_MEMORY, memory), (keys.DRA_CAPACITY_CORES, cores)) if v}
    if wanted:
        exactly["capacity"] = {"requests": wanted}
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    return {
        "apiVersion": RESOURCE_API,
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }


async def create_device_class(client: KubeClient) -> None:
    """Create the DeviceClasses, whole cards and MIG devices (already there is fine: cluster-wide
    objects)."""
    for body in (device_class(), mig_device_class()):
        with contextlib.suppress(AlreadyExistsError):
            await client.create(api_path(RESOURCE_API, "deviceclasses"), body)


async def create_dra_node(
    client: KubeClient,
    name: str,
    cards: Sequence[DeviceInfo],
    *,
    labels: dict[str, str] | None = None,
    pods: int = 500,
) -> dict[str, Any]:
    """Create a DRA-mode node (label, allocatable without ``nvidia.com/gpu``) and its ResourceSlice."""
    node = await create_node(
        client, name, labels={keys.OPERATING_MODE: keys.OPERATING_MODE_DRA, **(labels or {})}, pods=pods
    )
    await client.create(api_path(RESOURCE_API, "resourceslices"), resource_slice(name, cards))
    return node


def dra_plugin_in(root: Path, node: str, source: DeviceSource, kube: DraKube) -> DraNodePlugin:
    """`hami dra-plugin` of the DRA-mode node `node` serving `source`, every directory under `root`
    (keep it short: a unix socket path holds at most 107 bytes)."""
    settings = NodeSettings(node_name=node, operating_mode="dra", hook_path=str(root / "hook"))
    return DraNodePlugin(
        source,
        settings,
        kube,
        plugin_dir=root / "plugins",
        registry_dir=root / "registry",
        cdi_dir=str(root / "cdi"),
    )


@contextlib.asynccontextmanager
async def serving(plugin: DraNodePlugin, root: Path) -> AsyncIterator[DraNodePlugin]:
    """The plugin started (slice published, sockets served); stopped and `root` removed after."""
    await plugin.start()
    try:
        yield plugin
    finally:
        await plugin.stop()
        shutil.rmtree(root, ignore_errors=True)


def converted_pod(
    pod: dict[str, Any], namespace: str, policy: WebhookPolicy
) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """The pod as the webhook in DRA mode admits it (its pure core, no admission round trip), and
    the ResourceClaimTemplates it needs; raises AssertionError with the denial."""
    import jsonpatch  # a test dependency (the dev group), like pytest in hami.testing.fixtures

    decision = mutate_pod(pod, namespace=namespace, namespace_labels=None, policy=policy)
    if not decision.allowed:
        raise AssertionError(f"the webhook denies the pod: {decision.message}")
    converted: dict[str, Any] = jsonpatch.apply_patch(pod, list(decision.patch))
    return converted, decision.objects


async def create_converted_pod(
    client: KubeClient, namespace: str, policy: WebhookPolicy, pod: dict[str, Any]
) -> dict[str, Any]:
    """Create the templates and the converted pod (see :func:`converted_pod`)."""
    converted, templates = converted_pod(pod, namespace, policy)
    create = api_creator(client)
    for obj in templates:
        await create(obj)
    created: dict[str, Any] = await client.create(api_path("v1", "pods", namespace=namespace), converted)
    return created
