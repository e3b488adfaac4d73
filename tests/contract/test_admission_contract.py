"""AdmissionReview contract: golden reviews exactly as kube-apiserver sends them, posted over HTTPS.

The golden bodies below are what kube-apiserver (v1.34) puts on the wire for ``kubectl apply`` of a
Pod: defaulted spec (``schedulerName: default-scheduler``, ``terminationMessagePath``, the projected
service-account volume, tolerations from DefaultTolerationSeconds), ``creationTimestamp: null``, no
uid yet, ``managedFields`` from the field manager. The server is the real aiohttp server with a
certificate from the in-process self-signed CA; the client verifies it against that CA.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonpatch
import pytest

from hami.config import parse_device_config
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.server import runner_port, set_ready, start_webhook
from hami.webhook.tls import generate_self_signed, server_context_from_pem

GOLDEN_V1 = r"""{
  "kind": "AdmissionReview",
  "apiVersion": "admission.k8s.io/v1",
  "request": {
    "uid": "0df28fbd-5f5f-4b43-8c5b-8f0c3b1e2a44",
    "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
    "name": "trainer",
    "namespace": "team-a",
    "operation": "CREATE",
    "userInfo": {
      "username": "kubernetes-admin",
      "groups": ["kubeadm:cluster-admins", "system:authenticated"],
      "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=3f0e"]}
    },
    "object": {
      "kind": "Pod",
      "apiVersion": "v1",
      "metadata": {
        "name": "trainer",
        "namespace": "team-a",
        "creationTimestamp": null,
        "labels": {"app": "trainer"},
        "annotations": {
          "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"annotations\":{},\"labels\":{\"app\":\"trainer\"},\"name\":\"trainer\",\"namespace\":\"team-a\"},\"spec\":{\"containers\":[{\"image\":\"pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime\",\"name\":\"train\",\"resources\":{\"limits\":{\"nvidia.com/gpu\":1,\"nvidia.com/priority\":0}}},{\"image\":\"busybox\",\"name\":\"logger\"}]}}\n"
        },
        "managedFields": [
          {
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-22T07:30:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}, "f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"logger\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}, "k:{\"name\":\"train\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {".": {}, "f:limits": {".": {}, "f:nvidia.com/gpu": {}, "f:nvidia.com/priority": {}}, "f:requests": {".": {}, "f:nvidia.com/gpu": {}, "f:nvidia.com/priority": {}}}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}}, "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}
          }
        ]
      },
      "spec": {
        "volumes": [
          {
            "name": "kube-api-access-7qx2m",
            "projected": {
              "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
              ],
              "defaultMode": 420
            }
          }
        ],
        "containers": [
          {
            "name": "train",
            "image": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
            "resources": {
              "limits": {"nvidia.com/gpu": "1", "nvidia.com/priority": "0"},
              "requests": {"nvidia.com/gpu": "1", "nvidia.com/priority": "0"}
            },
            "volumeMounts": [
              {"name": "kube-api-access-7qx2m", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
            ],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"
          },
          {
            "name": "logger",
            "image": "busybox",
            "resources": {},
            "volumeMounts": [
              {"name": "kube-api-access-7qx2m", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
            ],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "Always"
          }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
          {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
          {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority"
      },
      "status": {}
    },
    "oldObject": null,
    "dryRun": false,
    "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-client-side-apply", "fieldValidation": "Strict"}
  }
}"""

# v1beta1 carries the same request; HAMi's own chart registers only v1beta1.
GOLDEN_V1BETA1 = GOLDEN_V1.replace('"admission.k8s.io/v1"', '"admission.k8s.io/v1beta1"').replace(
    "0df28fbd-5f5f-4b43-8c5b-8f0c3b1e2a44", "5b1c2e9a-61f0-4f7e-9d0e-7a4f2f7e8c11"
)

CONFIG = """
nvidia:
  overwriteEnv: true
  gpuCorePolicy: force
hami:
  enforcementOptOutNamespaces: [research]
"""


def _review(golden: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(golden)
    return out


def expected_v1_pod() -> dict[str, Any]:
    """The golden pod after the webhook: what the API server will store."""
    p = copy.deepcopy(_review(GOLDEN_V1)["request"]["object"])
    train, logger = p["spec"]["containers"]
    train["resources"]["limits"]["nvidia.com/gpucores"] = "100"
    train["env"] = [
        {"name": "CUDA_TASK_PRIORITY", "value": "0"},
        {"name": "GPU_CORE_UTILIZATION_POLICY", "value": "force"},
    ]
    logger["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}]
    p["spec"]["schedulerName"] = "hami-scheduler"
    return p


class Server:
    def __init__(
        self, url: str, client_ssl: ssl.SSLContext, session: aiohttp.ClientSession, runner: Any
    ) -> None:
        self.url = url
        self.ssl = client_ssl
        self.session = session
        self.runner = runner

    async def post(self, path: str, body: bytes | str) -> aiohttp.ClientResponse:
        data = body.encode() if isinstance(body, str) else body
        resp = await self.session.post(
            self.url + path, data=data, ssl=self.ssl, headers={"Content-Type": "application/json"}
        )
        await resp.read()
        return resp


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    certs = generate_self_signed(["hami-webhook.hami-system.svc", "localhost", "127.0.0.1"])
    policy = WebhookPolicy.from_config(parse_device_config(CONFIG)[0])

    async def labels(ns: str) -> dict[str, str] | None:
        return {"hami.io/webhook": "ignore"} if ns == "kube-system" else {"kubernetes.io/metadata.name": ns}

    runner = await start_webhook(
        policy,
        host="127.0.0.1",
        port=0,
        ssl_context=server_context_from_pem(certs.cert_pem, certs.key_pem),
        namespace_labels=labels,
    )
    client_ssl = ssl.create_default_context(cadata=certs.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        yield Server(f"https://127.0.0.1:{runner_port(runner)}", client_ssl, session, runner)
    await runner.cleanup()


async def _answer(server: Server, golden: str, path: str = "/webhook") -> dict[str, Any]:
    resp = await server.post(path, golden)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    out: dict[str, Any] = await resp.json()
    return out


@pytest.mark.parametrize(
    ("golden", "api_version"),
    [(GOLDEN_V1, "admission.k8s.io/v1"), (GOLDEN_V1BETA1, "admission.k8s.io/v1beta1")],
)
async def test_gpu_pod_is_mutated(server: Server, golden: str, api_version: str) -> None:
    sent = _review(golden)
    out = await _answer(server, golden)
    assert out["apiVersion"] == api_version
    assert out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert set(resp) == {"uid", "allowed", "patchType", "patch"}
    assert resp["uid"] == sent["request"]["uid"]
    assert resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"], validate=True))
    assert isinstance(ops, list) and all({"op", "path"} <= set(op) for op in ops)
    patched = jsonpatch.apply_patch(sent["request"]["object"], ops)
    assert patched == expected_v1_pod()


async def test_mutate_alias(server: Server) -> None:
    out = await _answer(server, GOLDEN_V1, path="/mutate")
    assert out["response"]["allowed"] is True and "patch" in out["response"]


async def test_denial_names_container_resource_and_reason(server: Server) -> None:
    review = _review(GOLDEN_V1)
    review["request"]["object"]["spec"]["containers"][0]["env"] = [
        {"name": "CUDA_DISABLE_CONTROL", "value": "true"}
    ]
    out = await _answer(server, json.dumps(review))
    resp = out["response"]
    assert resp["uid"] == review["request"]["uid"]
    assert resp["allowed"] is False
    assert "patch" not in resp and "patchType" not in resp
    assert resp["status"]["code"] == 403
    assert "container 'train'" in resp["status"]["message"]
    assert "CUDA_DISABLE_CONTROL" in resp["status"]["message"]


async def test_invalid_request_is_denied_with_400_status(server: Server) -> None:
    review = _review(GOLDEN_V1BETA1)
    review["request"]["object"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpumem-percentage"
    ] = "250"
    out = await _answer(server, json.dumps(review))
    assert out["apiVersion"] == "admission.k8s.io/v1beta1"
    status = out["response"]["status"]
    assert out["response"]["allowed"] is False and status["code"] == 400
    assert "container 'train'" in status["message"] and "nvidia.com/gpumem-percentage" in status["message"]


async def test_opt_out_namespace_may_disable_enforcement(server: Server) -> None:
    review = _review(GOLDEN_V1)
    review["request"]["namespace"] = "research"
    review["request"]["object"]["spec"]["containers"][0]["env"] = [
        {"name": "CUDA_DISABLE_CONTROL", "value": "true"}
    ]
    out = await _answer(server, json.dumps(review))
    assert out["response"]["allowed"] is True


async def test_ignored_namespace_is_left_alone(server: Server) -> None:
    review = _review(GOLDEN_V1)
    review["request"]["namespace"] = "kube-system"
    out = await _answer(server, json.dumps(review))
    assert out["response"] == {"uid": review["request"]["uid"], "allowed": True}


async def test_pod_without_gpus_gets_only_env_patch(server: Server) -> None:
    review = _review(GOLDEN_V1)
    del review["request"]["object"]["spec"]["containers"][0]
    out = await _answer(server, json.dumps(review))
    ops = json.loads(base64.b64decode(out["response"]["patch"]))
    assert ops == [
        {
            "op": "add",
            "path": "/spec/containers/0/env",
            "value": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}],
        }
    ]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (
            b'{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"x"}}',
            "apiVersion",
        ),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"x"}}', "kind"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', "request"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}', "uid"),
    ],
)
async def test_malformed_review_is_http_400(server: Server, body: bytes, fragment: str) -> None:
    resp = await server.post("/webhook", body)
    assert resp.status == 400
    payload = await resp.json()
    assert fragment in payload["message"]
    health = await server.session.get(server.url + "/healthz", ssl=server.ssl)
    assert health.status == 200


async def test_object_not_a_pod_object_is_denied(server: Server) -> None:
    review = _review(GOLDEN_V1)
    review["request"]["object"] = "garbage"
    out = await _answer(server, json.dumps(review))
    assert out["response"]["allowed"] is False and out["response"]["status"]["code"] == 400


async def test_non_create_and_non_pod_are_allowed_untouched(server: Server) -> None:
    review = _review(GOLDEN_V1)
    review["request"]["operation"] = "UPDATE"
    out = await _answer(server, json.dumps(review))
    assert out["response"] == {"uid": review["request"]["uid"], "allowed": True}
    review = _review(GOLDEN_V1)
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    out = await _answer(server, json.dumps(review))
    assert out["response"] == {"uid": review["request"]["uid"], "allowed": True}


async def test_health_and_readiness(server: Server) -> None:
    r = await server.session.get(server.url + "/readyz", ssl=server.ssl)
    assert r.status == 200
    set_ready(server.runner, False, "caBundle not injected yet")
    r = await server.session.get(server.url + "/readyz", ssl=server.ssl)
    assert r.status == 503 and "caBundle" in await r.text()


async def test_tls_is_required_and_verified(server: Server) -> None:
    plain = server.url.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):
        await server.session.post(plain + "/webhook", data=GOLDEN_V1)
    untrusted = ssl.create_default_context()  # system roots do not know our CA
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await server.session.post(server.url + "/webhook", data=GOLDEN_V1, ssl=untrusted)
