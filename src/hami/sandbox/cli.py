"""``hami sandbox up|down``: a local cluster with real nodes and simulated GPUs, hami installed by helm.

``up`` brings the sandbox up under ``--state`` (or reuses one already running there), installs
``charts/hami`` with the locally built images and the fake device source, applies the demo
workload (:mod:`hami.sandbox.demo`) and prints where each pod landed and what its container sees.
The cluster keeps running; ``down`` stops it and restores the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import click

from hami.kube.client import KubeClient
from hami.kube.config import load_kubeconfig
from hami.kube.errors import AlreadyExistsError, ApiError, KubeError
from hami.kube.paths import api_path
from hami.kube.poll import poll_until
from hami.protocol import bodies

DEFAULT_STATE = "/var/tmp/hami-sandbox"
RELEASE, RELEASE_NS = "hami", "hami-system"


def _step(message: str) -> float:
    click.echo(f"==> {message}", err=True)
    return time.monotonic()


def _done(started: float) -> None:
    click.echo(f"    done in {time.monotonic() - started:.1f} s", err=True)


#: the sandbox's nodes; examples/fake-sandbox.yaml describes each one's simulated GPUs
NODES = ("node1", "node2")


@click.group("sandbox")
def sandbox_command() -> None:
    """A local Kubernetes cluster with real kubelet + containerd nodes and simulated GPUs."""


@sandbox_command.command("up")
@click.option("--state", default=DEFAULT_STATE, show_default=True, type=click.Path(file_okay=False))
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--k8s-bin", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--containerd-bin", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--helm", "helm_path", required=True, type=click.Path(dir_okay=False, exists=True))
def up(state: str, repo: str, k8s_bin: str, containerd_bin: str, helm_path: str) -> None:
    """Start (or reuse) the sandbox, install hami, run the demo workload and print the table."""
    from hami.sandbox.cluster import NodeSpec, Sandbox, SandboxError
    from hami.sandbox.node import NodeBinaries
    from hami.testing.controlplane import ControlPlaneError, find_binaries
    from hami.testing.helm import Helm, HelmError

    root, state_dir = Path(repo).resolve(), Path(state).resolve()
    images = root / "dist" / "images"
    archives = [
        sorted(images.glob(f"{n}-*.tar")) for n in ("hami", "kube-scheduler", "pause", "ubuntu-standin")
    ]
    if not all(archives):
        raise click.ClickException(
            f"{images} lacks the hami, kube-scheduler, pause or ubuntu-standin image (run make images)"
        )
    kubeconfig = Sandbox.running_kubeconfig(state_dir)
    if kubeconfig is not None:
        click.echo(f"==> reusing the sandbox running in {state_dir}", err=True)
    else:
        started = _step(
            f"starting the sandbox in {state_dir}: control plane, {' and '.join(NODES)} (kubelet + containerd each)"
        )
        binaries = find_binaries(k8s_bin)
        sb = Sandbox(
            state_dir,
            binaries,
            NodeBinaries(Path(k8s_bin) / "kubelet", Path(containerd_bin)),
            [NodeSpec(name, {"gpu": "on"}) for name in NODES],
            images=[a[-1] for a in archives],
            detach=True,
            driver=root / "native" / "build" / "fake",
        )
        try:
            sb.start()
        except (ControlPlaneError, SandboxError, OSError) as exc:
            sb.stop()
            raise click.ClickException(f"the sandbox did not start: {exc}") from exc
        kubeconfig = Sandbox.running_kubeconfig(state_dir)
        assert kubeconfig is not None
        _done(started)
        started = _step("installing hami with helm (charts/hami, images hami.local/*)")
        values = sb.chart_values((root / "examples" / "fake-sandbox.yaml").read_text())
        # the demo shows what hami does: live usage from the node monitors, in the web UI
        values |= {"monitor": {"enabled": True}, "webui": {"enabled": True}}
        try:
            Helm(helm_path).release(
                "install",
                RELEASE,
                namespace=RELEASE_NS,
                kubeconfig=kubeconfig,
                chart=root / "charts" / "hami",
                values=values,
            )
        except HelmError as exc:
            raise click.ClickException(str(exc)) from exc
        _done(started)
    try:
        asyncio.run(_demo(kubeconfig))
    except (KubeError, TimeoutError) as exc:
        raise click.ClickException(f"demo workload: {exc}") from exc
    click.echo("")
    click.echo(f"KUBECONFIG={kubeconfig}")
    click.echo(f"  kubectl:  KUBECONFIG={kubeconfig} {Path(k8s_bin) / 'kubectl'} get pods -A")
    click.echo(
        f"  metrics:  KUBECONFIG={kubeconfig} {Path(k8s_bin) / 'kubectl'} -n {RELEASE_NS} "
        "port-forward deploy/hami-scheduler 9395  (then http://127.0.0.1:9395/metrics)"
    )
    click.echo(
        f"  web UI:   KUBECONFIG={kubeconfig} {Path(k8s_bin) / 'kubectl'} -n {RELEASE_NS} "
        "port-forward svc/hami-webui 8090  (then http://127.0.0.1:8090/)"
    )
    click.echo("  the cluster keeps running; `make demo-down` removes it and restores the host")


async def _wait(predicate: Any, timeout: float, what: str) -> Any:
    try:
        return await poll_until(predicate, timeout=timeout, interval=1.0)
    except TimeoutError:
        raise TimeoutError(f"{what} not reached within {timeout:.0f} s") from None


async def _demo(kubeconfig: str) -> None:
    from hami.sandbox.cluster import ensure_namespace
    from hami.sandbox.demo import NAMESPACE, render_table, row_for, workload

    async with KubeClient(load_kubeconfig(kubeconfig)) as kc:
        started = _step(
            "waiting for hami: scheduler pod and device plugins ready, every node advertising GPU slices"
        )

        async def hami_ready() -> bool:
            for name in NODES:
                node = await kc.get(api_path("v1", "nodes", name=name))
                if int(bodies.allocatable(node).get("nvidia.com/gpu", "0")) == 0:
                    return False
            dep = await kc.get(f"/apis/apps/v1/namespaces/{RELEASE_NS}/deployments/hami-scheduler")
            return bool(bodies.status(dep).get("availableReplicas", 0) >= 1)

        await _wait(hami_ready, 300, "hami ready")
        _done(started)
        started = _step(f"applying the demo workload in namespace {NAMESPACE}")
        await ensure_namespace(kc, NAMESPACE)
        pods = workload()
        for pod in pods:
            with contextlib.suppress(AlreadyExistsError):
                await kc.create(api_path("v1", "pods", namespace=NAMESPACE), pod)

        async def settled() -> bool:
            """Every pod runs, or kube-scheduler has said why it cannot place it; a reason that only
            says the extender is not leading yet (it follows kube-scheduler's Lease) is not an answer."""
            for pod in pods:
                got = await kc.get(api_path("v1", "pods", namespace=NAMESPACE, name=bodies.name(pod)))
                if bodies.phase(got) == "Running":
                    continue
                reason = await _reason(kc, NAMESPACE, bodies.name(pod))
                if not reason or "not the leader" in reason:
                    return False
            return True

        await _wait(settled, 180, "every demo pod running or explained")
        _done(started)
        rows = []
        for pod in pods:
            name = bodies.name(pod)
            got = await kc.get(api_path("v1", "pods", namespace=NAMESPACE, name=name))
            log = None
            if bodies.phase(got) == "Running":
                try:
                    log = await kc.get_text(api_path("v1", "pods", namespace=NAMESPACE, name=name) + "/log")
                except ApiError:
                    log = None
            rows.append(row_for(got, log, await _reason(kc, NAMESPACE, name)))
        click.echo(render_table(rows))


async def _reason(kc: KubeClient, namespace: str, name: str) -> str | None:
    events = (await kc.get(api_path("v1", "events", namespace=namespace))).get("items") or []
    for e in reversed(events):
        if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == "FailedScheduling":
            return str(e.get("message"))
    return None


@sandbox_command.command("down")
@click.option("--state", default=DEFAULT_STATE, show_default=True, type=click.Path(file_okay=False))
def down(state: str) -> None:
    """Stop the sandbox running in --state and restore the host (also after a killed run)."""
    from hami.sandbox.cluster import Sandbox

    state_dir = Path(state).resolve()
    if Sandbox.stop_detached(state_dir):
        click.echo(f"sandbox in {state_dir} stopped; host restored")
    else:
        click.echo(f"no sandbox in {state_dir}", err=True)
        sys.exit(0)
