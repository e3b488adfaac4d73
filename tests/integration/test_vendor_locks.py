"""Each vendor's bind lock against a real kube-apiserver, through the running extender's bind path.

Cambricon's device plugin releases only its own ``cambricon.com/dsmlu.lock`` (a bare RFC3339 time,
no owner; HAMi ``pkg/device/cambricon``), so binding a Cambricon pod must take that lock and never
``hami.io/mutex.lock``; a pod with Hygon and Cambricon cards takes both, in key order; a bind that
fails releases what it took; a Cambricon lock another bind holds is respected until it expires.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hami.config import parse_device_config
from hami.devices.cambricon import DSMLU_LOCK
from hami.extender.runner import Extender, ExtenderSettings
from hami.extender.wire import BindingArgs
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.protocol.nodelock import format_rfc3339, parse_rfc3339
from hami.testing.gpucluster import create_node
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

DSMLU = DSMLU_LOCK.key
MLU = {"cambricon.com/vmlu": "1", "cambricon.com/mlu.smlu.vmemory": "8", "cambricon.com/mlu.smlu.vcore": "20"}
DCU = {"hygon.com/dcunum": "1"}


@pytest.fixture
async def extender(kube_config: KubeConfig, kube_client: KubeClient) -> AsyncIterator[tuple[Extender, str]]:
    """A running extender for Cambricon and Hygon, and a node with both vendors' cards."""
    node = f"mlu-{uuid.uuid4().hex[:8]}"
    dcu = [DeviceInfo(id=f"DCU-{node}", count=4, devmem=16384, devcore=100, type="DCU-Z100", health=True)]
    await create_node(
        kube_client,
        node,
        labels={},
        annotations={"hami.io/node-dcu-register": encode_node_devices(dcu)},
        extra_capacity={
            "cambricon.com/mlu.smlu.vcore": "200",
            "cambricon.com/mlu.smlu.vmemory": "256",
            "hygon.com/dcunum": "4",
        },
    )
    config, _ = parse_device_config("cambricon: {}\nhygon: {}\n")
    ext = Extender(
        kube_config, ExtenderSettings(port=0, device_config=config, node_lock_expiry=300, bind_lock_wait=1)
    )
    await ext.start()
    try:
        yield ext, node
    finally:
        await ext.stop()
        with contextlib.suppress(NotFoundError):
            await kube_client.delete(api_path("v1", "nodes", name=node))


async def node_locks(kc: KubeClient, node: str) -> dict[str, str]:
    ann = bodies.annotations(await kc.get(api_path("v1", "nodes", name=node)))
    return {k: v for k, v in ann.items() if k in (DSMLU, keys.NODE_LOCK)}


async def make_pod(
    ext: Extender, kc: KubeClient, namespace: str, name: str, *limits: dict[str, str]
) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "nobody",  # bound by the test through the extender
            "containers": [
                {"name": f"c{i}", "image": "busybox", "resources": {"limits": lim}}
                for i, lim in enumerate(limits)
            ],
        },
    }
    pod = await kc.create(api_path("v1", "pods", namespace=namespace), body)

    # the extender's pod informer has it before the bind
    async def seen() -> dict[str, Any] | None:
        return ext._pod(namespace, name)

    await wait_for(seen, timeout=10)
    return pod


async def test_a_cambricon_bind_takes_the_dsmlu_lock_only(
    extender: tuple[Extender, str], kube_client: KubeClient, namespace: str
) -> None:
    ext, node = extender
    before = datetime.now(UTC).replace(microsecond=0)
    pod = await make_pod(ext, kube_client, namespace, "mlu", MLU)
    assert await ext.service.bind(BindingArgs("mlu", namespace, bodies.uid(pod), node)) == ""
    locks = await node_locks(kube_client, node)
    assert set(locks) == {DSMLU}  # never hami.io/mutex.lock, which Cambricon's plugin never frees
    assert before <= parse_rfc3339(locks[DSMLU]) <= datetime.now(UTC)  # a bare RFC3339 time, no owner
    p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="mlu"))
    assert bodies.node_name(p) == node
    assert bodies.annotations(p)["CAMBRICON_DSMLU_PROFILE"] == "1_20_8"
    # the next Cambricon bind waits for Cambricon's plugin to release it, and gives up after the wait
    other = await make_pod(ext, kube_client, namespace, "mlu-2", MLU)
    error = await ext.service.bind(BindingArgs("mlu-2", namespace, bodies.uid(other), node))
    assert "is locked" in error
    assert (await node_locks(kube_client, node))[DSMLU] == locks[DSMLU]
    # the plugin released it: the next bind takes it
    await kube_client.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {DSMLU: None}}}
    )
    assert await ext.service.bind(BindingArgs("mlu-2", namespace, bodies.uid(other), node)) == ""
    assert set(await node_locks(kube_client, node)) == {DSMLU}


async def test_a_pod_with_both_vendors_takes_both_locks(
    extender: tuple[Extender, str], kube_client: KubeClient, namespace: str
) -> None:
    ext, node = extender
    pod = await make_pod(ext, kube_client, namespace, "both", MLU, DCU)
    assert await ext.service.bind(BindingArgs("both", namespace, bodies.uid(pod), node)) == ""
    locks = await node_locks(kube_client, node)
    assert set(locks) == {DSMLU, keys.NODE_LOCK}
    assert locks[keys.NODE_LOCK].endswith(f",{namespace},both")


async def test_a_failed_bind_releases_the_locks_it_took(
    extender: tuple[Extender, str], kube_client: KubeClient, namespace: str
) -> None:
    """The mutex lock is held by another pod still allocating: the bind took the Cambricon lock
    first (key order), then gives up on the mutex lock and releases the Cambricon lock."""
    ext, node = extender
    holder = await make_pod(ext, kube_client, namespace, "holder", DCU)
    await kube_client.merge_patch(
        api_path("v1", "pods", namespace=namespace, name="holder"),
        {"metadata": {"annotations": {keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING}}},
    )
    held = f"{format_rfc3339(datetime.now(UTC))},{namespace},{bodies.name(holder)}"
    await kube_client.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {keys.NODE_LOCK: held}}}
    )
    pod = await make_pod(ext, kube_client, namespace, "both", MLU, DCU)
    error = await ext.service.bind(BindingArgs("both", namespace, bodies.uid(pod), node))
    assert "is locked" in error
    assert await node_locks(kube_client, node) == {keys.NODE_LOCK: held}  # no Cambricon lock leaked
    p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="both"))
    assert not bodies.node_name(p)
    assert bodies.uid(pod) not in ext.scheduler.state.pods  # nor a reservation


async def test_an_expired_cambricon_lock_is_taken_over(
    extender: tuple[Extender, str], kube_client: KubeClient, namespace: str
) -> None:
    ext, node = extender
    stale = format_rfc3339(datetime.now(UTC) - timedelta(seconds=301))
    await kube_client.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {DSMLU: stale}}}
    )
    pod = await make_pod(ext, kube_client, namespace, "mlu", MLU)
    assert await ext.service.bind(BindingArgs("mlu", namespace, bodies.uid(pod), node)) == ""
    assert (await node_locks(kube_client, node))[DSMLU] != stale
