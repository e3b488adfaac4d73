"""kubeconfig ``exec`` credential plugins against the real kube-apiserver.

The plugin is a real executable (a shell script) run by :mod:`hami.kube.execauth` the way client-go
runs ``aws eks get-token`` or ``gke-gcloud-auth-plugin``. It answers with credentials the test API
server really accepts: a ServiceAccount token from the TokenRequest API, or a client certificate
signed by the cluster CA. Who the server thinks we are is read back with a SelfSubjectReview.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.kube.client import KubeClient
from hami.kube.config import load_kubeconfig
from hami.kube.errors import TransportError
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

API = "client.authentication.k8s.io/v1"
PLUGIN = """#!/bin/sh
# answers out.<n> (or out) for its n-th run; records KUBERNETES_EXEC_INFO; fails while 'fail' exists
dir="$PLUGIN_DIR"
n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/count"
printf '%s' "$KUBERNETES_EXEC_INFO" > "$dir/info.$n"
if [ -f "$dir/fail" ]; then echo "token service unavailable" >&2; exit 3; fi
if [ -f "$dir/out.$n" ]; then cat "$dir/out.$n"; else cat "$dir/out"; fi
"""


def credential(**status: Any) -> str:
    return json.dumps({"apiVersion": API, "kind": "ExecCredential", "status": status})


class Plugin:
    def __init__(self, tmp: Path, control_plane: ControlPlane) -> None:
        self.dir = tmp
        script = tmp / "bin" / "get-token"
        script.parent.mkdir()
        script.write_text(PLUGIN)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        self.control_plane = control_plane

    def answer(self, text: str, run: int | None = None) -> None:
        (self.dir / ("out" if run is None else f"out.{run}")).write_text(text)

    @property
    def runs(self) -> int:
        path = self.dir / "count"
        return int(path.read_text()) if path.exists() else 0

    def exec_info(self, run: int) -> dict[str, Any]:
        info: dict[str, Any] = json.loads((self.dir / f"info.{run}").read_text())
        return info

    def kubeconfig(self, **exec_extra: Any) -> Path:
        cp = self.control_plane
        user_exec = {
            "apiVersion": API,
            # relative with a slash: resolved next to the kubeconfig, as client-go does
            "command": "./bin/get-token",
            "env": [{"name": "PLUGIN_DIR", "value": str(self.dir)}],
            "interactiveMode": "Never",
            **exec_extra,
        }
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": cp.server,
                        "certificate-authority-data": base64.b64encode(cp.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "u", "user": {"exec": user_exec}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path = self.dir / "kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest.fixture
def plugin(tmp_path: Path, control_plane: ControlPlane) -> Plugin:
    return Plugin(tmp_path, control_plane)


async def whoami(client: KubeClient) -> str:
    review = await client.create(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


async def sa_token(admin: KubeClient, namespace: str, name: str) -> str:
    await admin.create(api_path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": name}})
    path = api_path("v1", "serviceaccounts", namespace=namespace, name=name) + "/token"
    out = await admin.create(
        path, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    )
    return str(out["status"]["token"])


async def test_token_plugin_authenticates_and_is_cached(
    plugin: Plugin, kube_client: KubeClient, namespace: str
) -> None:
    plugin.answer(credential(token=await sa_token(kube_client, namespace, "robot")))
    async with KubeClient(load_kubeconfig(plugin.kubeconfig(provideClusterInfo=True))) as client:
        assert await whoami(client) == f"system:serviceaccount:{namespace}:robot"
        await client.version()
        assert plugin.runs == 1  # no expiry: reused until the server refuses it
    info = plugin.exec_info(1)
    assert info["apiVersion"] == API and info["kind"] == "ExecCredential"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == plugin.control_plane.server
    assert (
        base64.b64decode(info["spec"]["cluster"]["certificate-authority-data"]) == plugin.control_plane.ca_pem
    )


async def test_refused_token_runs_the_plugin_again(
    plugin: Plugin, kube_client: KubeClient, namespace: str
) -> None:
    plugin.answer(credential(token="revoked-or-forged"), run=1)
    plugin.answer(credential(token=await sa_token(kube_client, namespace, "robot")))
    async with KubeClient(load_kubeconfig(plugin.kubeconfig())) as client:
        assert await whoami(client) == f"system:serviceaccount:{namespace}:robot"
    assert plugin.runs == 2
    assert "cluster" not in plugin.exec_info(1)["spec"]  # provideClusterInfo not set


async def test_expired_credentials_are_fetched_again(
    plugin: Plugin, kube_client: KubeClient, namespace: str
) -> None:
    token = await sa_token(kube_client, namespace, "robot")
    plugin.answer(credential(token=token, expirationTimestamp="2000-01-01T00:00:00Z"))
    async with KubeClient(load_kubeconfig(plugin.kubeconfig())) as client:
        for _ in range(3):
            await whoami(client)
    assert plugin.runs == 3


async def test_client_certificate_plugin(plugin: Plugin, control_plane: ControlPlane) -> None:
    assert control_plane.ca is not None
    pair = control_plane.ca.issue("exec-cert-user", organizations=["system:masters"], client=True)
    plugin.answer(
        credential(clientCertificateData=pair.cert_pem.decode(), clientKeyData=pair.key_pem.decode())
    )
    async with KubeClient(load_kubeconfig(plugin.kubeconfig())) as client:
        assert await whoami(client) == "exec-cert-user"
        # watches authenticate the same way
        namespaces = api_path("v1", "namespaces")
        rv = (await client.list(namespaces))["metadata"]["resourceVersion"]
        async with client.watch(namespaces, resource_version=rv, timeout_seconds=10) as events:
            await client.create(namespaces, {"metadata": {"name": "exec-cert-watch"}})
            first = await anext(events)
        assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "exec-cert-watch"
    assert plugin.runs == 1


async def test_a_failing_plugin_is_a_transport_error_naming_it(plugin: Plugin) -> None:
    (plugin.dir / "fail").write_text("")
    async with KubeClient(load_kubeconfig(plugin.kubeconfig())) as client:
        with pytest.raises(
            TransportError, match=r"get-token' exited with status 3: token service unavailable"
        ):
            await client.version()


async def test_a_missing_plugin_names_the_install_hint(plugin: Plugin) -> None:
    path = plugin.kubeconfig(
        command="no-such-auth-plugin", installHint="install it with your package manager"
    )
    async with KubeClient(load_kubeconfig(path)) as client:
        with pytest.raises(TransportError, match="not found or not executable; install it with your package"):
            await client.version()
