"""deploy/webhook.yaml and the webhook server against a real kube-apiserver (v1 and v1beta1 reviews).

Registers the shipped MutatingWebhookConfiguration (clientConfig switched to a loopback URL and
scoped to this test's namespaces so other tests are unaffected), injects the caBundle through
``hami.kube``, then creates pods through the API. This is the regression net for the CEL
``matchConditions`` and selectors in the YAML, which nothing else evaluates.
Needs the control-plane binaries (skipped without them unless HAMI_REQUIRE_INTEGRATION=1).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.config import parse_device_config
from hami.kube.client import KubeClient
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.testing.fixtures import control_plane, kube_client, kube_config  # noqa: F401
from hami.testing.webhooks import create_until_admitted_by_webhook
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.server import NamespaceLabelCache, runner_port, start_webhook
from hami.webhook.tls import generate_self_signed, inject_ca_bundle, server_context_from_pem

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "webhook.yaml"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def _pod(
    name: str, limits: dict[str, Any] | None = None, env: list[dict[str, str]] | None = None, **spec: Any
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "main", "image": "busybox"}
    if limits:
        c["resources"] = {"limits": limits}
    if env:
        c["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [c, {"name": "side", "image": "busybox"}], **spec},
    }


async def _create(kc: KubeClient, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    return await kc.create(api_path("v1", "pods", namespace=ns), pod)


async def _denied(kc: KubeClient, ns: str, pod: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        await _create(kc, ns, pod)
    return info.value


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_registration_and_webhook_on_kube_apiserver(kube_client: KubeClient, version: str) -> None:  # noqa: F811
    kc = kube_client
    tag = uuid.uuid4().hex[:6]
    team, research, quiet = f"wh-team-{tag}", f"wh-research-{tag}", f"wh-quiet-{tag}"
    for ns, labels in ((team, {}), (research, {}), (quiet, {"hami.io/webhook": "ignore"})):
        await kc.create(api_path("v1", "namespaces"), {"metadata": {"name": ns, "labels": labels}})

    certs = generate_self_signed(["127.0.0.1"])
    cfg = parse_device_config(
        f"hami:\n  enforcementOptOutNamespaces: [{research}]\nnvidia:\n  gpuCorePolicy: force\n"
    )[0]
    runner = await start_webhook(
        WebhookPolicy.from_config(cfg),
        ssl_context=server_context_from_pem(certs.cert_pem, certs.key_pem),
        namespace_labels=NamespaceLabelCache(kc),
    )
    doc = yaml.safe_load(DEPLOY.read_text())
    doc["metadata"]["name"] = f"hami-webhook-{tag}"
    wh = doc["webhooks"][0]
    wh["clientConfig"] = {"url": f"https://127.0.0.1:{runner_port(runner)}/webhook"}
    wh["admissionReviewVersions"] = [version]
    wh["namespaceSelector"]["matchExpressions"].append(
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [team, research, quiet]}
    )
    await kc.create(MWC, doc)
    try:
        assert await inject_ca_bundle(kc, doc["metadata"]["name"], certs.ca_bundle) == 1

        gpu = await create_until_admitted_by_webhook(
            lambda _: _create(
                kc, team, _pod(f"gpu-{uuid.uuid4().hex[:4]}", {"nvidia.com/gpu": 1, "nvidia.com/priority": 0})
            ),
            lambda pod: pod["spec"]["schedulerName"] == "hami-scheduler",
        )
        main = gpu["spec"]["containers"][0]
        assert main["resources"]["limits"]["nvidia.com/gpucores"] == "100"
        assert main["resources"]["requests"]["nvidia.com/gpucores"] == "100"  # defaulted after the patch
        assert {"name": "CUDA_TASK_PRIORITY", "value": "0"} in main["env"]
        assert {"name": "GPU_CORE_UTILIZATION_POLICY", "value": "force"} in main["env"]

        mem = await _create(kc, team, _pod("mem", {"nvidia.com/gpumem": "2000"}))
        assert mem["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

        cpu = await _create(kc, team, _pod("cpu"))  # matchConditions: not sent to the webhook
        assert cpu["spec"]["schedulerName"] == "default-scheduler"

        off = _pod("off", {"nvidia.com/gpu": 1}, [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}])
        err = await _denied(kc, team, off)
        assert err.status == 403 and "container 'main'" in str(err) and "CUDA_DISABLE_CONTROL" in str(err)
        err = await _denied(kc, team, _pod("off-cpu", env=[{"name": "CUDA_DISABLE_CONTROL", "value": "1"}]))
        assert err.status == 403
        err = await _denied(kc, team, _pod("bad", {"nvidia.com/gpu": 1, "nvidia.com/gpucores": "150"}))
        assert err.status == 400 and "nvidia.com/gpucores" in str(err)
        err = await _denied(kc, team, _pod("pinned", {"nvidia.com/gpu": 1}, nodeName="n1"))
        assert "spec.nodeName" in str(err)

        allowed = await _create(kc, research, off)
        assert allowed["spec"]["schedulerName"] == "hami-scheduler"
        ignored = await _create(kc, quiet, _pod("gpu", {"nvidia.com/gpu": 1}))
        assert ignored["spec"]["schedulerName"] == "default-scheduler"

        await runner.cleanup()  # failurePolicy: Fail — GPU pods refused, CPU pods still admitted
        err = await _denied(kc, team, _pod("down", {"nvidia.com/gpu": 1}))
        assert "vgpu.hami.io" in str(err)
        assert (await _create(kc, team, _pod("down-cpu")))["metadata"]["name"] == "down-cpu"
    finally:
        await kc.delete(f"{MWC}/{doc['metadata']['name']}")
        await runner.cleanup()
        # the GPU pods created here name hami-scheduler and no node: remove them so that a later
        # test's kube-scheduler does not place them on its GPU nodes
        for ns in (team, research, quiet):
            await kc.request("DELETE", api_path("v1", "pods", namespace=ns), params={"gracePeriodSeconds": 0})
