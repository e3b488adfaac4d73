"""hami installed by its own chart into the real-node sandbox, the wait until it leads, the GPU
probe pods the chart-installed modules run, and the metrics of hami's pods read through the API
server's pod proxy."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from hami.deviceplugin.kubeops import merge_patch
from hami.kube.client import KubeClient
from hami.kube.errors import KubeError
from hami.kube.paths import api_path
from hami.kube.poll import poll_until
from hami.protocol import keys
from hami.sandbox.cluster import Sandbox, ensure_namespace
from hami.sandbox.probe import PROBE, report
from hami.testing.helm import Helm, HelmMissingError, find_helm
from hami.testing.prereq import missing
from hami.testing.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]
RELEASE, NAMESPACE = "hami", "hami-system"


@contextlib.contextmanager
def chart_installed(
    sandbox: Sandbox, extra: dict[str, Any] | None = None, *, fake_node: str | None = None
) -> Iterator[Helm]:
    """``helm install`` of charts/hami with the sandbox's values (the fake device source
    ``fake_node``, YAML, by default examples/fake-node-small.yaml, on every node) with ``extra``
    merged into them (as helm merges values files); uninstalled on exit. Every ``hami.io/``
    annotation is removed from the nodes first: a module starts from nodes no earlier install
    registered (a device plugin never removes what a later configuration stops advertising on a
    node it no longer serves, e.g. another node's vendor cards or a node switched to DRA)."""
    assert sandbox.cp is not None
    _clear_hami_node_annotations(sandbox)
    try:
        helm = Helm(find_helm())
    except HelmMissingError as exc:
        missing(str(exc), integration=True)
    if fake_node is None:
        fake_node = (ROOT / "examples" / "fake-node-small.yaml").read_text()
    values = merge_patch(sandbox.chart_values(fake_node), extra or {})
    kubeconfig = str(sandbox.cp.kubeconfig_path)
    helm.release(
        "install",
        RELEASE,
        namespace=NAMESPACE,
        kubeconfig=kubeconfig,
        chart=ROOT / "charts" / "hami",
        values=values,
    )
    try:
        yield helm
    finally:
        helm.release("uninstall", RELEASE, namespace=NAMESPACE, kubeconfig=kubeconfig)


def _clear_hami_node_annotations(sandbox: Sandbox) -> None:
    assert sandbox.cp is not None
    kubectl = [
        str(sandbox.binaries.kube_apiserver.parent / "kubectl"),
        "--kubeconfig",
        str(sandbox.cp.kubeconfig_path),
    ]
    nodes = json.loads(
        subprocess.run(
            [*kubectl, "get", "nodes", "-o", "json"], check=True, capture_output=True, text=True
        ).stdout
    )
    for node in nodes["items"]:
        stale = [k for k in (node["metadata"].get("annotations") or {}) if k.startswith("hami.io/")]
        if stale:
            subprocess.run(
                [*kubectl, "annotate", "node", node["metadata"]["name"], *(f"{k}-" for k in stale)],
                check=True,
                capture_output=True,
            )


@contextlib.asynccontextmanager
async def scratch_namespace(kc: KubeClient, prefix: str = "rn") -> AsyncIterator[str]:
    """A fresh namespace ``<prefix>-<random>`` whose default ServiceAccount exists (pods need it to
    be admitted). Its pods are deleted on exit and waited for, so no test's cards stay taken for
    the next one; then the namespace is deleted."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await ensure_namespace(kc, name, timeout=30)
    try:
        yield name
    finally:
        pods = api_path("v1", "pods", namespace=name)
        await kc.request("DELETE", pods, params={"gracePeriodSeconds": 0})

        async def gone() -> bool:
            return not (await kc.get(pods)).get("items")

        await poll_until(gone, timeout=60)
        await kc.request("DELETE", api_path("v1", "namespaces", name=name))


async def workload_ready(kc: KubeClient, kind: str, name: str) -> bool:
    """A Deployment with its replicas available, or a DaemonSet ready on every node it wants."""
    obj = await kc.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/{kind}/{name}")
    status = obj.get("status") or {}
    if kind == "deployments":
        return bool(status.get("availableReplicas", 0) >= (obj["spec"].get("replicas") or 1))
    return bool(
        status.get("desiredNumberScheduled", 0) >= 1
        and status.get("numberReady") == status.get("desiredNumberScheduled")
    )


async def pods_summary(kc: KubeClient) -> list[Any]:
    pods = (await kc.get(api_path("v1", "pods", namespace=NAMESPACE))).get("items") or []
    return [
        (p["metadata"]["name"], p["status"].get("phase"), p["status"].get("containerStatuses")) for p in pods
    ]


async def hami_leading(kc: KubeClient) -> None:
    """hami is up and its extender leads: the scheduler pod's /readyz (through the API server's pod
    proxy) says "ok", not "ok (follower)" — the extender follows kube-scheduler's Lease, and until it
    sees it, kube-scheduler's first attempts are answered "not the leader" and retried later."""

    async def ready() -> bool:
        if not (
            await workload_ready(kc, "deployments", "hami-scheduler")
            and await workload_ready(kc, "daemonsets", "hami-device-plugin")
        ):
            return False
        pods = await kc.list(
            api_path("v1", "pods", namespace=NAMESPACE),
            label_selector="app.kubernetes.io/component=scheduler",
        )
        for p in pods["items"]:
            proxy = (
                f"{api_path('v1', 'pods', namespace=NAMESPACE, name=p['metadata']['name'])}:9395/proxy/readyz"
            )
            try:
                said = await kc.get_text(proxy)
            except KubeError:
                continue
            if said.strip() == "ok":
                return True
        return False

    try:
        await wait_for(ready, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await pods_summary(kc)}") from None


def vendor_node_spec(node: str, vendors: dict[str, Any]) -> str:
    """examples/fake-node-small.yaml, and another vendor's devices (the fake source's ``vendors:``
    section) on ``node`` beside its NVIDIA cards."""
    small = yaml.safe_load((ROOT / "examples" / "fake-node-small.yaml").read_text())
    small["nodes"] = {node: {"cards": small["cards"], "vendors": vendors}}
    return yaml.safe_dump(small, sort_keys=False)


@contextlib.asynccontextmanager
async def vendor_leading(kc: KubeClient, node: str, registered: Sequence[str]) -> AsyncIterator[None]:
    """hami leads; afterwards the node lock and the ``registered`` node annotations are removed, as
    the vendor's device plugin (the lock) and its uninstall (the registration) would."""
    await hami_leading(kc)
    yield
    gone: dict[str, None] = dict.fromkeys([keys.NODE_LOCK, *registered])
    await kc.merge_patch(api_path("v1", "nodes", name=node), {"metadata": {"annotations": gone}})


async def bound_pod(kc: KubeClient, ns: str, name: str) -> dict[str, Any]:
    """The pod once it is bound to a node."""

    async def bound() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        return p if p["spec"].get("nodeName") else None

    pod: dict[str, Any] = await wait_for(bound, timeout=60, interval=0.5)
    return pod


async def created_and_bound(kc: KubeClient, ns: str, pod: dict[str, Any], node: str) -> dict[str, str]:
    """Create ``pod`` (no schedulerName) in ``ns``: the webhook must route it to hami-scheduler and
    the pod be bound to ``node``, with ``hami.io/vgpu-node`` naming it. The bound pod's annotations."""
    created = await kc.create(api_path("v1", "pods", namespace=ns), pod)
    assert created["spec"]["schedulerName"] == "hami-scheduler", created["spec"]  # the webhook routed it
    bound = await bound_pod(kc, ns, pod["metadata"]["name"])
    assert bound["spec"]["nodeName"] == node
    ann: dict[str, str] = bound["metadata"]["annotations"]
    assert ann[keys.VGPU_NODE] == node
    return ann


async def started_pod(kc: KubeClient, ns: str, name: str) -> dict[str, Any]:
    """The pod once it has left Pending (Running, Succeeded or Failed)."""

    async def started() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        return p if p["status"].get("phase") in ("Running", "Succeeded", "Failed") else None

    pod: dict[str, Any] = await wait_for(started, timeout=120, interval=0.5)
    return pod


#: the probe, then holding what it allocated until the pod is deleted
HOLD = PROBE + "\nimport time\ntime.sleep(10**6)\n"
IMAGE = "hami.local/hami:0.1.0"


def gpu_pod(
    name: str,
    limits: dict[str, Any],
    command: list[str],
    *,
    node: str | None = None,
    env: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A one-container pod of hami's image (no schedulerName: the webhook routes it), on ``node``
    when given (a nodeSelector on the hostname label), with ``env`` for its container and the
    pod ``annotations``."""
    container: dict[str, Any] = {
        "name": "main",
        "image": IMAGE,
        "command": command,
        "resources": {"limits": limits},
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }
    if node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"metadata": meta, "spec": spec}


async def probe_report(
    kc: KubeClient, ns: str, name: str, timeout: float = 180, *, container: str | None = None
) -> dict[str, Any]:
    """The probe's report from pod ``name``'s log (of ``container`` when given), once it has printed it."""
    params = {"container": container} if container else None

    async def reported() -> dict[str, Any] | None:
        try:
            path = api_path("v1", "pods", namespace=ns, name=name) + "/log"
            return report(await kc.get_text(path, params=params))
        except (KubeError, ValueError):
            return None

    seen: dict[str, Any] = await wait_for(reported, timeout=timeout, interval=0.5)
    return seen


async def scrape_metrics(
    kc: KubeClient, component: str, node: str | None, port: int
) -> dict[str, Any] | None:
    """The metrics (families by name) of ``component``'s pod (on ``node``), through the API
    server's pod proxy; None while no such pod answers."""
    pods = await kc.list(
        api_path("v1", "pods", namespace=NAMESPACE), label_selector=f"app.kubernetes.io/component={component}"
    )
    for p in pods["items"]:
        if node is not None and p["spec"].get("nodeName") != node:
            continue
        proxy = (
            f"{api_path('v1', 'pods', namespace=NAMESPACE, name=p['metadata']['name'])}:{port}/proxy/metrics"
        )
        try:
            text = await kc.get_text(proxy)
        except KubeError:
            continue
        return {f.name: f for f in text_string_to_metric_families(text)}
    return None


def samples(fams: dict[str, Any], name: str, **match: str) -> list[Any]:
    """The samples of family ``name`` whose labels include ``match``."""
    fam = fams.get(name)
    return [s for s in (fam.samples if fam else []) if all(s.labels.get(k) == v for k, v in match.items())]
