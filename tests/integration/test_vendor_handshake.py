"""HAMi's scheduler side of the vendor handshake (``hami.io/node-handshake-<x>``) against a real
kube-apiserver, written by the running extender: ``Requesting_<time>`` on a node that registers
the vendor's devices, again after the plugin reports, and the annotation deleted once the plugin is
gone (its stamp older than 60 s and nothing allocatable)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from hami.config import parse_device_config
from hami.extender.runner import Extender, ExtenderSettings
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.protocol.handshake import decode_handshake, encode_requesting
from hami.protocol.node import DeviceInfo, encode_node_devices_legacy
from hami.testing.gpucluster import create_node, set_node_status
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

HANDSHAKE = "hami.io/node-handshake-dcu"
REGISTER = "hami.io/node-dcu-register"


@pytest.fixture
async def dcu_node(kube_client: KubeClient) -> AsyncIterator[str]:
    name = f"dcu-{uuid.uuid4().hex[:8]}"
    card = DeviceInfo(id=f"DCU-{name}", count=4, devmem=16384, devcore=100, type="DCU-Z100", health=True)
    await create_node(
        kube_client,
        name,
        labels={},
        annotations={REGISTER: encode_node_devices_legacy([card])},
        extra_capacity={"hygon.com/dcunum": "4"},
    )
    yield name
    with contextlib.suppress(NotFoundError):
        await kube_client.delete(api_path("v1", "nodes", name=name))


async def cached(ext: Extender, node: str, want: Any) -> dict[str, str]:
    """The node as the extender's informer has it, once ``want(annotations)`` holds."""

    async def check() -> dict[str, str] | None:
        obj = ext.nodes.get(node)
        ann = bodies.annotations(obj) if obj is not None else {}
        return ann if want(ann) else None

    found: dict[str, str] = await wait_for(check, timeout=15)
    return found


async def set_handshake(kc: KubeClient, node: str, value: str | None) -> None:
    await kc.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {HANDSHAKE: value}}}
    )


async def test_the_extender_answers_the_vendor_handshake(
    kube_config: KubeConfig, kube_client: KubeClient, dcu_node: str
) -> None:
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    await create_node(kube_client, plain, labels={})
    config, _ = parse_device_config("hygon: {}\n")
    # one pass at start; the test drives the next ones
    ext = Extender(kube_config, ExtenderSettings(port=0, device_config=config, handshake_interval=3600))
    await ext.start()
    try:
        ann = await cached(ext, dcu_node, lambda a: HANDSHAKE in a)
        first = decode_handshake(ann[HANDSHAKE])
        assert first.state == "requesting" and first.time is not None
        assert ann[HANDSHAKE] == encode_requesting(first.time)  # Requesting_YYYY-MM-DD HH:MM:SS
        # the plugin reports: the scheduler requests again
        await set_handshake(kube_client, dcu_node, "Reported 2026-12-07 10:00:00.1 +0000 UTC m=+12.3")
        await cached(ext, dcu_node, lambda a: a.get(HANDSHAKE, "").startswith("Reported"))
        assert await ext.handshakes.reconcile() == 1
        await cached(ext, dcu_node, lambda a: a.get(HANDSHAKE, "").startswith("Requesting_"))
        # an old stamp while the plugin's resource is allocatable: healthy, nothing written
        old = encode_requesting(datetime.now() - timedelta(minutes=2))
        await set_handshake(kube_client, dcu_node, old)
        await cached(ext, dcu_node, lambda a: a.get(HANDSHAKE) == old)
        assert await ext.handshakes.reconcile() == 0
        # the plugin is gone (nothing allocatable): the handshake is deleted, as HAMi's NodeCleanUp
        await set_node_status(kube_client, dcu_node, {"pods": "10", "hygon.com/dcunum": "0"})
        await cached(ext, dcu_node, lambda a: True)
        await wait_for(lambda: _patched(ext), timeout=15)
        n = await kube_client.get(api_path("v1", "nodes", name=dcu_node))
        assert HANDSHAKE not in bodies.annotations(n)
        # a node without the vendor's registration never gets one
        p = await kube_client.get(api_path("v1", "nodes", name=plain))
        assert HANDSHAKE not in bodies.annotations(p)
    finally:
        await ext.stop()
        with contextlib.suppress(NotFoundError):
            await kube_client.delete(api_path("v1", "nodes", name=plain))


async def _patched(ext: Extender) -> bool:
    return await ext.handshakes.reconcile() == 1
