"""The scheduler pod and the device plugin as the chart configures them, each running under the
chart's own ServiceAccount and RBAC: kube-scheduler (the chart's KubeSchedulerConfiguration),
hami's extender following kube-scheduler's Lease, and the real device plugin on a fake node.
A GPU pod goes from creation through bind to a finished Allocate; every API call on the way is
made with the identity the chart gives the component, so a missing permission fails here.

The extender listens on a free port instead of 127.0.0.1:8080 (the only change to the chart's
configuration), since other processes on the test machine may hold 8080.

The webhook runs as the real `hami webhook` command with the chart's arguments (loopback port and
files of this machine swapped in), creates its CA Secret, patches the caBundle of the chart's
MutatingWebhookConfiguration and mutates a GPU pod, as the scheduler's ServiceAccount. That
configuration is stored for real here, narrowed to the test's own namespace and pointed at the
loopback URL (the API server has no route to a Service), and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_apply import install
from chart_values import CHART, Rendered, ValueSet

from hami.config.device import parse_device_config
from hami.deviceplugin.sources.fake import FakeSource
from hami.draplugin.kubeops import ClientDraKube
from hami.draplugin.slices import slice_name
from hami.extender.runner import Extender, ExtenderSettings
from hami.kube.client import KubeClient
from hami.kube.config import load_kubeconfig
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.protocol.dra import RESOURCE_API
from hami.testing.apply import Applier, service_account_user
from hami.testing.controlplane import ControlPlane, SchedulerHandle, free_port
from hami.testing.dra import dra_plugin_in
from hami.testing.drakubelet import DraKubelet
from hami.testing.gpucluster import create_gpu_node
from hami.testing.helm import Helm
from hami.testing.pluginnode import PluginNode
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

RUN = ValueSet("run", "chart-run", "run-hami", {"schedulerName": "chart-run-scheduler"})


def _kubeconfig_as(cp: ControlPlane, service_account: str, namespace: str = RUN.namespace) -> Path:
    """A kubeconfig whose client certificate carries the ServiceAccount's user name and groups:
    RBAC sees the same subject as for the ServiceAccount's token."""
    user, groups = service_account_user(namespace, service_account)
    return cp.kubeconfig_for(user, [g for g in groups if g != "system:authenticated"])


def _fake_node(path: Path, node: str) -> Path:
    cards = [
        {"uuid": f"GPU-{node}-{i}", "index": i, "model": "NVIDIA A100-SXM4-40GB", "memory": 16384}
        for i in range(2)
    ]
    path.write_text(yaml.safe_dump({"cards": cards}))
    return path


async def _pod(kc: KubeClient, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
    return pod


async def test_components_work_with_the_charts_identities(
    helm: Helm,
    control_plane: ControlPlane,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    tmp_path: Path,
) -> None:
    r = Rendered(RUN, helm.render(CHART, release=RUN.release, namespace=RUN.namespace, values=RUN.values))
    await install(kube_client, r, only_rbac=True)
    ns, sched_name = RUN.namespace, RUN.values["schedulerName"]
    device_config, _ = parse_device_config(
        r.get("ConfigMap", "run-hami-device-config")["data"]["device-config.yaml"]
    )
    sched_cfg = yaml.safe_load(r.get("ConfigMap", "run-hami-scheduler")["data"]["config.yaml"])

    scheduler_identity = _kubeconfig_as(control_plane, "run-hami-scheduler")
    port = free_port()
    extender = Extender(
        load_kubeconfig(scheduler_identity),
        ExtenderSettings(
            host="127.0.0.1",
            port=port,
            device_config=device_config,
            follow_scheduler_lease=True,
            lease_namespace=ns,
            lease_name=sched_name,
            retry_period=0.5,
        ),
    )
    plugin_client = KubeClient(load_kubeconfig(_kubeconfig_as(control_plane, "run-hami-device-plugin")))
    node_name = f"{namespace}-gpu"
    fake = _fake_node(tmp_path / "fake-node.yaml", node_name)
    await extender.start()
    try:
        async with PluginNode(
            kube_client, node_name, fake, labels={"hami-test": namespace}, agent_client=plugin_client
        ) as node:
            sched_cfg["extenders"][0]["urlPrefix"] = f"http://127.0.0.1:{port}"
            sched_cfg["clientConnection"] = {"kubeconfig": str(scheduler_identity)}
            await asyncio.to_thread(start_scheduler, sched_cfg)

            # kube-scheduler, as the chart's ServiceAccount, leads on its Lease in the release namespace
            lease_path = api_path("coordination.k8s.io/v1", "leases", namespace=ns, name=sched_name)
            lease = await wait_for(lambda: _holder(kube_client, lease_path), timeout=60)
            assert lease.split("_")[0] == extender.settings.lease_holder_prefix
            await wait_for(lambda: _leads(extender), timeout=30)

            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "train"},
                "spec": {
                    "schedulerName": sched_name,
                    "nodeSelector": {"hami-test": namespace},
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/cuda:12",
                            "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 4000}},
                        }
                    ],
                },
            }
            await kube_client.create(api_path("v1", "pods", namespace=namespace), pod)
            bound = await wait_for(lambda: _bound(kube_client, namespace, "train"), timeout=60)
            assert bound["spec"]["nodeName"] == node_name
            ann = bound["metadata"]["annotations"]
            assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
            # written by the extender's filter-time patch (a Binding carries annotations, not labels)
            assert bound["metadata"]["labels"][keys.VGPU_NODE] == node_name
            assert keys.NODE_LOCK in await node.annotations()

            # the device plugin, as its ServiceAccount, allocates, annotates the pod, frees the lock
            (admission,) = await node.admit(namespace, "train")
            assert admission.envs[keys.ENV_VISIBLE_DEVICES].startswith(f"GPU-{node_name}-")
            done = await _pod(kube_client, namespace, "train")
            assert done["metadata"]["annotations"][keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
            assert keys.NODE_LOCK not in await node.annotations()
    finally:
        await extender.stop()
        await plugin_client.close()


async def _holder(kc: KubeClient, path: str) -> str | None:
    try:
        lease = await kc.get(path)
    except Exception:
        return None
    holder = (lease.get("spec") or {}).get("holderIdentity")
    return str(holder) if holder else None


async def _bound(kc: KubeClient, ns: str, name: str) -> dict[str, Any] | None:
    pod = await _pod(kc, ns, name)
    return pod if pod["spec"].get("nodeName") else None


async def _leads(extender: Extender) -> bool:
    return extender.service.is_leader()


def _webhook_argv(r: Rendered, port: int, device_config: Path, kubeconfig: Path) -> list[str]:
    """The chart's webhook container arguments, for a process on this machine."""
    argv = [sys.executable, "-c", "from hami.cli import main; main()"]
    for arg in r.container("Deployment", "run-hami-scheduler", "webhook")["args"]:
        if arg.startswith("--bind="):
            arg = f"--bind=127.0.0.1:{port}"
        elif arg.startswith("--device-config="):
            arg = f"--device-config={device_config}"
        elif arg.startswith("--self-signed-hosts="):
            arg += ",127.0.0.1"  # the test API server calls it by URL
        argv.append(arg)
    return [*argv, f"--kubeconfig={kubeconfig}"]


async def test_webhook_runs_with_the_charts_identity(
    helm: Helm, control_plane: ControlPlane, kube_client: KubeClient, namespace: str, tmp_path: Path
) -> None:
    r = Rendered(RUN, helm.render(CHART, release=RUN.release, namespace=RUN.namespace, values=RUN.values))
    await install(kube_client, r, only_rbac=True)
    device_config = tmp_path / "device-config.yaml"
    device_config.write_text(r.get("ConfigMap", "run-hami-device-config")["data"]["device-config.yaml"])
    port = free_port()
    argv = _webhook_argv(r, port, device_config, _kubeconfig_as(control_plane, "run-hami-scheduler"))

    mwc = copy.deepcopy(r.get("MutatingWebhookConfiguration", "run-hami-webhook"))
    hook = mwc["webhooks"][0]
    hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/webhook"}
    hook["namespaceSelector"]["matchExpressions"].append(
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}
    )
    applier = Applier(kube_client, field_manager="hami-chart-test")
    mwc_path = await applier.path(mwc)
    await applier.apply(mwc)
    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            await wait_for(lambda: _running(proc, _ca_bundle(kube_client, mwc_path)), timeout=60)
            pod = await wait_for(lambda: _running(proc, _mutated(kube_client, namespace)), timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nwebhook log:\n{log.read_text()[-4000:]}") from None
        assert pod["spec"]["schedulerName"] == "chart-run-scheduler"
        secret = await kube_client.get(
            api_path("v1", "secrets", namespace=RUN.namespace, name="run-hami-webhook-ca")
        )
        assert {"ca.crt", "ca.key"} <= set(secret["data"])
    finally:
        await kube_client.delete(mwc_path)
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


async def _running(proc: subprocess.Popen[bytes], check: Coroutine[Any, Any, Any]) -> Any:
    """``await check``, failing at once when the webhook process has exited."""
    if proc.poll() is not None:
        check.close()  # never awaited
        raise AssertionError(f"hami webhook exited with {proc.returncode}")
    return await check


async def _ca_bundle(kc: KubeClient, path: str) -> str | None:
    mwc = await kc.get(path)
    bundle = mwc["webhooks"][0]["clientConfig"].get("caBundle")
    return str(bundle) if bundle else None


async def _mutated(kc: KubeClient, ns: str) -> dict[str, Any] | None:
    """Create a GPU pod; it once the API server has the new configuration and the webhook answers."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"gpu-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/cuda:12",
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ]
        },
    }
    try:
        created: dict[str, Any] = await kc.create(api_path("v1", "pods", namespace=ns), pod)
    except ApiError:  # failurePolicy Fail: refused until the API server trusts the new caBundle
        return None
    return created if created["spec"]["schedulerName"] != "default-scheduler" else None


DRA = ValueSet("dra", "chart-dra", "dra-hami", {"draPlugin": {"enabled": True}})


async def test_dra_plugin_works_with_the_charts_identity(
    helm: Helm, control_plane: ControlPlane, kube_client: KubeClient, namespace: str
) -> None:
    """`hami dra-plugin` as the chart's ServiceAccount: it publishes the node's slice, updates it
    when a card turns unhealthy, and reads the claim it prepares."""
    r = Rendered(DRA, helm.render(CHART, release=DRA.release, namespace=DRA.namespace, values=DRA.values))
    await install(kube_client, r, only_rbac=True)
    node = f"{namespace}-dra"
    await create_gpu_node(kube_client, node, [])
    tmp_path = Path(tempfile.mkdtemp(prefix="hdrc", dir="/tmp"))  # unix socket paths: <= 107 bytes
    card = f"GPU-{node}-0"
    source = FakeSource({"cards": [{"uuid": card, "memory": 16384}]})
    identity = load_kubeconfig(_kubeconfig_as(control_plane, "dra-hami-dra-plugin", DRA.namespace))
    async with KubeClient(identity) as client:
        plugin = dra_plugin_in(tmp_path, node, source, ClientDraKube(client))
        await plugin.start()
        try:
            slice_path = api_path(RESOURCE_API, "resourceslices", name=slice_name(node))
            published = await kube_client.get(slice_path)
            assert [d["name"] for d in published["spec"]["devices"]] == ["gpu-0"]

            # a claim allocated on the card (its status written as kube-scheduler would)
            claims = api_path(RESOURCE_API, "resourceclaims", namespace=namespace)
            request = {"name": "gpu", "exactly": {"deviceClassName": keys.DRA_DEVICE_CLASS}}
            claim = await kube_client.create(
                claims, {"metadata": {"name": "c1"}, "spec": {"devices": {"requests": [request]}}}
            )
            result = {"request": "gpu", "driver": keys.DRA_DRIVER, "pool": node, "device": "gpu-0"}
            claim["status"] = {"allocation": {"devices": {"results": [result]}}}
            await kube_client.replace(
                api_path(
                    RESOURCE_API, "resourceclaims", namespace=namespace, name="c1", subresource="status"
                ),
                claim,
            )
            kubelet = DraKubelet(tmp_path / "registry", keys.DRA_DRIVER)
            await kubelet.register()
            resp = await kubelet.prepare((namespace, claim["metadata"]["uid"], "c1"))
            assert resp.claims[claim["metadata"]["uid"]].error == ""

            source.inject_health(card, False, xid=79)

            async def withdrawn() -> bool:
                return not (await kube_client.get(slice_path))["spec"]["devices"]

            await wait_for(withdrawn, timeout=30)
        finally:
            await plugin.stop()
            shutil.rmtree(tmp_path, ignore_errors=True)
