"""A whole Kubernetes cluster on this machine: control plane, controllers and real nodes.

``Sandbox.start()`` brings up, in order: the host changes (:class:`~hami.sandbox.host.HostGuard`:
the ``hami0`` bridge holding the sandbox's addresses, the ``kubernetes`` Service NAT, saved
sysctls, node cgroup roots), etcd + kube-apiserver on ``API_IP`` (so that pods reach it through
the Service IP like in any cluster), kube-controller-manager (Deployments, DaemonSets, service
accounts, namespaces, garbage collection, EndpointSlices), and the nodes (:class:`RealNode`), each
with the local images imported; it returns once every node is Ready. ``stop()`` undoes all of it.

A stock kube-scheduler serves ``default-scheduler``; hami's own is installed by its chart.
The API server reaches webhooks through their endpoints (``--enable-aggregator-routing``), since no
kube-proxy runs; pods reach the API server through the NAT rule for ``10.0.0.1:443``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import AlreadyExistsError, NotFoundError
from hami.kube.paths import api_path
from hami.kube.poll import poll_until
from hami.protocol import bodies
from hami.sandbox.driver import CARDS_ENV, DriverError, card_list, cards_file, install_driver
from hami.sandbox.host import HostGuard, mounts_below
from hami.sandbox.node import NodeBinaries, RealNode, remove_containers
from hami.testing.controlplane import Binaries, ControlPlane, ControlPlaneError, Lifecycle, Process

log = logging.getLogger(__name__)

__all__ = ["API_IP", "NodeSpec", "Sandbox", "SandboxError", "ensure_namespace"]

RECORD = "sandbox.json"


class SandboxError(RuntimeError):
    """The sandbox could not be brought up (the message says which step and why)."""


async def ensure_namespace(kc: KubeClient, name: str, timeout: float = 60.0) -> None:
    """Create namespace ``name`` (if missing) and wait until the service account controller has
    made its ``default`` ServiceAccount, without which pods there are refused."""
    with contextlib.suppress(AlreadyExistsError):
        await kc.create(api_path("v1", "namespaces"), {"metadata": {"name": name}})

    async def has_account() -> bool:
        try:
            await kc.get(api_path("v1", "serviceaccounts", namespace=name, name="default"))
        except NotFoundError:
            return False
        return True

    try:
        await poll_until(has_account, timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"namespace {name}: no default ServiceAccount after {timeout:.0f} s") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(procs: list[dict[str, Any]], timeout: float = 10.0) -> None:
    """SIGTERM the process groups, then SIGKILL what is left after ``timeout``."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(p["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(int(p["pid"])) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(p["pid"]), signal.SIGKILL)


SUBNET = "10.213.0.0/24"
API_IP = "10.213.0.1"
SERVICE_IP = "10.0.0.1"
CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "job-controller",
    "endpoints-controller",
    "endpointslice-controller",
)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


class Sandbox(Lifecycle):
    """Control plane + real nodes under ``state`` (see the module docstring)."""

    def __init__(
        self,
        state: Path,
        binaries: Binaries,
        node_binaries: NodeBinaries,
        nodes: Sequence[NodeSpec],
        images: Sequence[Path] = (),
        detach: bool = False,
        driver: Path | None = None,
    ) -> None:
        """``detach``: the cluster outlives this process (``make demo``); :meth:`stop_detached`
        stops it later from what :meth:`start` wrote to ``<state>/sandbox.json``. ``driver``: a
        directory with the fake ``libcuda.so.1`` / ``libnvidia-ml.so.1`` (``native/build/fake``),
        installed on the "host" at :attr:`driver_root` like a GPU driver."""
        if not 1 <= len(nodes) <= 9:
            raise ValueError("a sandbox has 1 to 9 nodes")
        self.state = state
        self.binaries = binaries
        self.node_binaries = node_binaries
        self.node_specs = list(nodes)
        self.images = list(images)
        self.host = HostGuard(state)
        self.detach = detach
        self.driver = driver
        self.driver_root = state / "driver"
        #: the GPU hook path the chart is given (``global.gpuHookPath``): private to each node
        self.hook_path = state / "hook"
        self.cp: ControlPlane | None = None
        self.nodes: list[RealNode] = []

    # ------------------------------------------------------------------------------ start

    def start(self, ready_timeout: float = 120.0) -> Self:
        self.host.recover()
        self.state.mkdir(parents=True, exist_ok=True)
        if self.driver is not None:
            try:
                install_driver(self.driver, self.driver_root)
            except DriverError as exc:
                raise SandboxError(str(exc)) from None
        self.host.save_sysctls()
        self.host.fixed_paths()
        self.host.mounts_under(self.state)
        self.host.set_sysctl("net.ipv4.ip_forward", "1")
        node_ips = [f"10.213.0.{11 + i}" for i in range(len(self.node_specs))]
        self.host.bridge([f"{ip}/24" for ip in (API_IP, *node_ips)])
        self._start_control_plane()
        assert self.cp is not None
        self.host.service_nat(SERVICE_IP, 443, f"{API_IP}:{self.cp.apiserver_port}")
        for i, (spec, ip) in enumerate(zip(self.node_specs, node_ips, strict=True)):
            self.host.cgroup_root(f"hami-{spec.name}")
            node = RealNode(
                self.cp,
                self.node_binaries,
                name=spec.name,
                ip=ip,
                state=self.state / "nodes" / spec.name,
                pod_cidr=f"10.214.{i}.0/24",
                labels=spec.labels,
                detach=self.detach,
                # each node installs libvgpu.so and keeps its containers' regions in a hook
                # directory of its own, like separate machines
                private={str(self.hook_path): self.state / "nodes" / spec.name / "hook"},
            )
            self.nodes.append(node)
            node.start_containerd()
            for image in self.images:
                node.import_image(image)
            node.start_kubelet()
        self.wait_ready(ready_timeout)
        if self.detach:
            self._write_record()
        return self

    # ------------------------------------------------------------------------------ detached

    def _write_record(self) -> None:
        assert self.cp is not None
        record = {
            "kubeconfig": str(self.cp.kubeconfig_path),
            "server": self.cp.server,
            "processes": [{"name": p.name, "pid": p.pid} for p in self.processes()],
            "nodes": [{"name": n.name, "sock": str(n.sock), "ctr": str(n.binaries.ctr)} for n in self.nodes],
        }
        (self.state / RECORD).write_text(json.dumps(record, indent=2))

    @staticmethod
    def running_kubeconfig(state: Path) -> str | None:
        """The kubeconfig of a detached sandbox whose processes all still run in ``state``; a
        sandbox there with any process gone is stopped and cleaned up (None then)."""
        try:
            record = json.loads((state / RECORD).read_text())
        except (OSError, ValueError):
            return None
        dead = [p["name"] for p in record.get("processes", []) if not _alive(int(p["pid"]))]
        if not dead:
            return str(record["kubeconfig"])
        log.warning("sandbox in %s lost %s; stopping what is left", state, ", ".join(dead))
        Sandbox.stop_detached(state)
        return None

    @staticmethod
    def stop_detached(state: Path) -> bool:
        """Stop a detached sandbox (kubelets, pods, containerd, control plane), restore the host
        and remove ``state``. Also cleans up after a killed run. False when nothing was there."""
        try:
            record = json.loads((state / RECORD).read_text())
        except (OSError, ValueError):
            record = {}
        found = bool(record) or (state / "host.json").exists()
        procs = record.get("processes", [])
        _kill([p for p in procs if str(p["name"]).startswith("kubelet-")])
        for node in record.get("nodes", []):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                remove_containers(Path(node["ctr"]), Path(node["sock"]))
        _kill([p for p in procs if not str(p["name"]).startswith("kubelet-")])
        host = HostGuard(state)
        host.recover()
        for point in mounts_below(str(state)):  # also what a run that never wrote host.json left
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(state, ignore_errors=True)
        return found

    def fake_node_spec(self, text: str) -> str:
        """A fake device source file (YAML) with this sandbox's simulated driver added."""
        spec = yaml.safe_load(text) or {}
        if self.driver is not None:
            spec["driver"] = {"root": str(self.driver_root)}
        return yaml.safe_dump(spec, sort_keys=False)

    def chart_values(self, fake_node: str) -> dict[str, Any]:
        """helm values that fit hami's chart to this sandbox: the host installer writes under the
        sandbox's state (not the host's /usr/local), and the device plugin uses the fake device
        source ``fake_node`` (YAML) with the simulated driver. The first node allocates lock-free
        (``allocationmode: cdi`` in its node config entry), the others with the node lock: one
        cluster runs both modes. With the simulated driver, the node monitor reads it as a real
        node's monitor reads the host's NVML: each node's card list is written next to the
        libraries now (:mod:`hami.sandbox.driver`) and the monitor is given the library and its
        node's list (``monitor.nvml``)."""
        lock_free = {"nodeconfig": [{"name": self.node_specs[0].name, "allocationmode": "cdi"}]}
        values: dict[str, Any] = {
            "global": {"gpuHookPath": str(self.hook_path)},
            "devicePlugin": {
                "fakeNode": self.fake_node_spec(fake_node),
                "nodeConfiguration": {"config": json.dumps(lock_free)},
            },
        }
        if self.driver is not None:
            spec = yaml.safe_load(fake_node) or {}
            for node in self.node_specs:
                cards_file(self.driver_root, node.name).write_text(card_list(spec, node.name))
            # $(NODE_NAME): Kubernetes expands the monitor's own NODE_NAME (from spec.nodeName)
            cards = str(cards_file(self.driver_root, "$(NODE_NAME)"))
            values["monitor"] = {"nvml": {"hostPath": str(self.driver_root), "env": {CARDS_ENV: cards}}}
        return values

    def _start_control_plane(self) -> None:
        cp_dir = self.state / "control-plane"
        shutil.rmtree(cp_dir, ignore_errors=True)
        cp_dir.mkdir(parents=True)
        pki = cp_dir / "pki"
        self.cp = ControlPlane(
            self.binaries,
            workdir=cp_dir,
            detach=self.detach,
            host=API_IP,
            client_certs={"kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"])},
            # nodes would start tainted not-ready, and no node lifecycle controller runs to lift it
            disabled_admission=["TaintNodesByCondition"],
            apiserver_args=[
                # webhooks are reached through their endpoints: no kube-proxy runs here
                "--enable-aggregator-routing=true",
                # logs, exec, port-forward: the nodes' InternalIP and a client certificate their
                # webhook authorizer accepts
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            ],
        )
        self.cp.start()
        self.cp.start_controller_manager(CONTROLLERS)
        # the cluster's default-scheduler (hami's own kube-scheduler comes with its chart)
        self.cp.start_scheduler(None, name="default-scheduler")
        self._bind_node_role()

    def _bind_node_role(self) -> None:
        """kubelets authenticate as group system:nodes; RBAC's system:node role is what they need."""

        from hami.kube.client import KubeClient

        async def bind() -> None:
            assert self.cp is not None
            async with KubeClient(self.cp.kube_config()) as kc:
                await kc.create(
                    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                    {
                        "metadata": {"name": "hami-sandbox:nodes"},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": "system:node",
                        },
                        "subjects": [
                            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
                        ],
                    },
                )

        asyncio.run(bind())

    def wait_ready(self, timeout: float) -> None:

        from hami.kube.client import KubeClient

        async def ready() -> tuple[set[str], bool]:
            """(Ready nodes, whether the service account controller has made default/default)."""
            assert self.cp is not None
            async with KubeClient(self.cp.kube_config()) as kc:
                nodes = (await kc.get("/api/v1/nodes")).get("items") or []
                accounts = (await kc.get("/api/v1/namespaces/default/serviceaccounts")).get("items") or []
            out = set()
            for n in nodes:
                for cond in bodies.conditions(n):
                    if cond.get("type") == "Ready" and cond.get("status") == "True":
                        out.add(bodies.name(n))
            return out, any(bodies.name(a) == "default" for a in accounts)

        want = {s.name for s in self.node_specs}
        deadline = time.monotonic() + timeout
        while True:
            for p in self.processes():
                if not p.alive:
                    raise ControlPlaneError(f"{p.name} exited while starting:\n{p.tail()}")
            got, accounts = asyncio.run(ready())
            if want <= got and accounts:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"nodes not Ready after {timeout:.0f}s: {sorted(want - got)}\n{self.logs_tail()}"
                )
            time.sleep(0.5)

    # ------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()
        self.nodes = []
        if self.cp is not None:
            self.cp.stop()
            self.cp = None
        self.host.restore()

    # ------------------------------------------------------------------------------ access

    def kube_config(self) -> KubeConfig:
        assert self.cp is not None
        return self.cp.kube_config()

    def processes(self) -> list[Process]:
        procs = self.cp.processes() if self.cp is not None else []
        for node in self.nodes:
            procs += node.processes()
        return procs

    def logs_tail(self, lines: int = 40) -> str:
        parts: list[str] = []
        for p in self.processes():
            state = "running" if p.alive else f"exited {p.popen.returncode}"
            parts.append(f"---- {p.name} ({state}) {p.log_path}\n{p.tail(lines)}")
        return "\n".join(parts)

    def describe(self) -> dict[str, Any]:
        assert self.cp is not None
        return {
            "server": self.cp.server,
            "kubeconfig": str(self.cp.kubeconfig_path),
            "nodes": [n.name for n in self.nodes],
        }
