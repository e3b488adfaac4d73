"""One real Kubernetes node on this machine: containerd v2 + runc + kubelet, joined to a control plane.

Guarantees:

* everything the node writes lives under its ``state`` directory (containerd root/state/socket, CNI
  config, kubelet root dir, certificates, logs), except what kubelet and runc write in fixed places:
  ``/run/containerd/runc``, the node's cgroup root and its CNI bridge; :class:`hami.sandbox.host.HostGuard` undoes those and the sysctls kubelet
  rewrites;
* the node's containerd and kubelet (and so every container they start) run in a mount namespace
  of the node's own, pinned at ``<state>/ns/mnt``, in which each host directory of
  :data:`PRIVATE_DIRS` (and any ``private`` directory the caller adds) is a directory of the node's
  own state: kubelet's hard-coded ``/var/lib/kubelet/device-plugins`` (a starting kubelet deletes
  every other socket in it), the node-lock directory ``/tmp/vgpulock``, and the container log
  directories ``/var/log/pods`` and ``/var/log/containers`` (kubelet's garbage collection removes
  the log directories of pods its own runtime does not run: the other node's), the kubelet's
  PodResources directory ``/var/lib/kubelet/pod-resources`` (its ``pod-resources`` under the node's
  kubelet root dir) and ``/run/cdi`` (``/var/run/cdi``: the node's CDI spec directory, which its
  containerd reads) — so several nodes
  share this machine as if each had its own. The host's copies stay empty mount points; a host process
  that plays a node's device plugin uses :attr:`RealNode.plugin_dir`;
* no image is ever pulled from outside: every registry host resolves to a closed loopback port, so
  only images imported with :meth:`import_image` run;
* containerd runs with ``restrict_oom_score_adj`` (root here lacks ``CAP_SYS_RESOURCE``, so runc
  could not lower a sandbox's OOM score and every pod would fail), its CDI spec directory under
  ``state``, network namespaces under ``state``, and ``sandbox`` pinned to a locally imported pause
  image (there is no registry);
* kubelet authenticates as ``system:node:<name>`` (group ``system:nodes``), serves its API with a
  certificate for the node IP signed by the cluster CA, and accepts only clients the API server
  vouches for (x509 + webhook authn/authz) — so ``kubectl logs``/``exec`` work through the API;
* :meth:`stop` stops kubelet, then every pod sandbox through the CRI, then containerd.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hami.sandbox.host import mounts_below
from hami.testing.controlplane import ControlPlane, ControlPlaneError, Process, free_port

__all__ = ["PRIVATE_DIRS", "SANDBOX_IMAGE", "NodeBinaries", "RealNode"]

#: host directories every node gets a private copy of (see the module docstring); the last two are
#: the lock-free device plugin's: the kubelet's PodResources socket directory (the kubelet serves it
#: under its root dir) and the CDI spec directory the chart mounts (containerd reads ``<state>/cdi``)
PRIVATE_DIRS = (
    "/var/lib/kubelet/device-plugins",
    "/tmp/vgpulock",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet/pod-resources",
    "/run/cdi",
)

#: the pause image containerd pins as every pod's sandbox (built and imported by the sandbox)
SANDBOX_IMAGE = "hami.local/pause:3.10"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
RUNC = "/usr/sbin/runc"
#: where image pulls are sent: a loopback port nothing listens on (port 1, tcpmux, is never served here)
NO_REGISTRY_PORT = 1


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    containerd_dir: Path  # containerd, containerd-shim-runc-v2, ctr

    @property
    def containerd(self) -> Path:
        return self.containerd_dir / "containerd"

    @property
    def ctr(self) -> Path:
        return self.containerd_dir / "ctr"


class RealNode:
    """A kubelet + containerd pair named ``name`` with IP ``ip`` (an address the sandbox owns)."""

    def __init__(
        self,
        cp: ControlPlane,
        binaries: NodeBinaries,
        *,
        name: str,
        ip: str,
        state: Path,
        pod_cidr: str,
        labels: dict[str, str] | None = None,
        detach: bool = False,
        private: dict[str, Path] | None = None,
    ) -> None:
        """``private``: more host directories (key) that are the given directory of the node's own
        (value) inside its mount namespace (the sandbox makes the GPU hook path per node)."""
        self.cp = cp
        self.detach = detach
        self.binaries = binaries
        self.name = name
        self.ip = ip
        self.state = state
        self.pod_cidr = pod_cidr
        self.labels = dict(labels or {})
        self.containerd: Process | None = None
        self.kubelet: Process | None = None
        self.sock = state / "containerd" / "containerd.sock"
        self.root_dir = state / "kubelet"
        self.logdir = state / "logs"
        self.mntns = state / "ns" / "mnt"
        #: what the node's kubelet sees as /var/lib/kubelet/device-plugins
        self.plugin_dir = state / "device-plugins"
        #: the CDI spec directory containerd reads (``cdi_spec_dirs``), /run/cdi in the namespace
        self.cdi_dir = state / "cdi"
        self.private = {PRIVATE_DIRS[0]: self.plugin_dir}
        self.private.update({d: state / "private" / Path(d).name for d in PRIVATE_DIRS[1:4]})
        self.private[PRIVATE_DIRS[4]] = self.root_dir / "pod-resources"
        self.private[PRIVATE_DIRS[5]] = self.cdi_dir
        self.private.update(private or {})

    def _env(self) -> dict[str, str]:
        """This environment with containerd's directory first on PATH (its shim is looked up there)."""
        return {**os.environ, "PATH": f"{self.binaries.containerd_dir}:{os.environ.get('PATH', '')}"}

    # ------------------------------------------------------------------------------ namespace

    def _make_namespace(self) -> None:
        """Create the node's mount namespace (see the module docstring) unless it exists."""
        ns_dir = self.mntns.parent
        ns_dir.mkdir(parents=True, exist_ok=True)
        if _mountpoint(self.mntns):
            return
        # a namespace can only be pinned to a file on a private mount
        if not _mountpoint(ns_dir):
            _mount("--bind", str(ns_dir), str(ns_dir))
            _mount("--make-private", str(ns_dir))
        self.mntns.touch()
        script = ["set -e"]
        for host_dir, own in sorted(self.private.items()):
            own.mkdir(parents=True, exist_ok=True)
            Path(host_dir).mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {shlex.quote(str(own))} {shlex.quote(host_dir)}")
        out = subprocess.run(
            [
                "unshare",
                f"--mount={self.mntns}",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
                "\n".join(script),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if out.returncode != 0:
            raise ControlPlaneError(f"mount namespace for {self.name}: {out.stderr.strip()}")

    def _in_namespace(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--mount={self.mntns}", "--", *argv]

    # ------------------------------------------------------------------------------ containerd

    def _containerd_config(self) -> str:
        c = self.state / "containerd"
        cni_conf = self.state / "cni"
        cfg = f"""version = 3
root = "{c / "root"}"
state = "{c / "state"}"

[grpc]
  address = "{self.sock}"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{SANDBOX_IMAGE}"

[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{self.state / "registry"}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = ["{self.cdi_dir}"]

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = {json.dumps([d for d in CNI_BIN_DIRS if Path(d).is_dir()])}
  conf_dir = "{cni_conf}"
"""
        return cfg

    def _cni_config(self) -> dict[str, Any]:
        bridge = f"hamicni{self.name[-1]}" if self.name[-1].isdigit() else "hamicni0"
        return {
            "cniVersion": "1.0.0",
            "name": f"hami-{self.name}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }

    def start_containerd(self, timeout: float = 60.0) -> None:
        for d in ("containerd/root", "containerd/state", "cni", "cdi", "cni-ipam"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        # every registry resolves to a closed loopback port: an image that was not imported fails
        # to pull at once, and no pull ever leaves the machine (not even a DNS lookup)
        default_hosts = self.state / "registry" / "_default" / "hosts.toml"
        default_hosts.parent.mkdir(parents=True, exist_ok=True)
        default_hosts.write_text(f'server = "https://127.0.0.1:{NO_REGISTRY_PORT}"\n')
        cfg = self.state / "containerd" / "config.toml"
        cfg.write_text(self._containerd_config())
        self._make_namespace()
        (self.state / "cni" / "10-hami.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        env = self._env()
        self.containerd = Process(
            f"containerd-{self.name}",
            self._in_namespace([str(self.binaries.containerd), "--config", str(cfg)]),
            self.logdir / "containerd.log",
            env=env,
            detach=self.detach,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.containerd.alive:
                raise ControlPlaneError(f"containerd for {self.name} exited:\n{self.containerd.tail()}")
            if self.sock.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"containerd for {self.name} not ready in {timeout:.0f}s:\n{self.containerd.tail()}"
        )

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this node's containerd in the ``k8s.io`` namespace."""
        out = run_ctr(self.binaries.ctr, self.sock, *args)
        if check and out.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)} on {self.name}: {out.stderr.strip()}")
        return out

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", "--no-unpack=false", str(archive))

    # ------------------------------------------------------------------------------ kubelet

    def _write_kubelet_files(self) -> tuple[Path, Path]:
        assert self.cp.ca is not None
        pki = self.state / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        client = self.cp.ca.issue(f"system:node:{self.name}", organizations=["system:nodes"], client=True)
        serving = self.cp.ca.issue(self.name, dns=[self.name], ips=[self.ip])
        serving.write(pki, "kubelet-serving")
        (pki / "ca.crt").write_bytes(self.cp.ca.cert_pem)
        kubeconfig = self.state / "kubelet.kubeconfig"
        self.cp.write_kubeconfig(kubeconfig, client)
        self.kubelet_port = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/hami-{self.name}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "evictionHard": {
                "memory.available": "1%",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "podCIDR": self.pod_cidr,
            "maxPods": 50,
            "registerNode": True,
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
        }
        path = self.state / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path, kubeconfig

    def start_kubelet(self) -> None:
        config, kubeconfig = self._write_kubelet_files()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        argv = [
            str(self.binaries.kubelet),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.root_dir}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            "--v=1",
        ]
        if labels:
            argv.append(f"--node-labels={labels}")
        env = self._env()
        self.kubelet = Process(
            f"kubelet-{self.name}",
            self._in_namespace(argv),
            self.logdir / "kubelet.log",
            env=env,
            detach=self.detach,
        )

    def restart_kubelet(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        self.start_kubelet()

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.containerd is not None and self.containerd.alive:
            self._remove_pods()
            self.containerd.stop()
        for point in mounts_below(str(self.state)):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _remove_pods(self) -> None:
        remove_containers(self.binaries.ctr, self.sock)

    def processes(self) -> list[Process]:
        return [p for p in (self.containerd, self.kubelet) if p is not None]


def _mountpoint(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def _mount(*args: str) -> None:
    out = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise ControlPlaneError(f"mount {' '.join(args)}: {out.stderr.strip()}")


def run_ctr(ctr: Path, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ctr`` against the containerd at ``sock``, namespace ``k8s.io`` (never raises on failure)."""
    return subprocess.run(
        [str(ctr), "--address", str(sock), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def remove_containers(ctr: Path, sock: Path) -> None:
    """Stop and remove every container and pod sandbox a containerd runs (tasks first)."""

    def run(*args: str) -> str:
        return run_ctr(ctr, sock, *args).stdout

    tasks = run("tasks", "list", "--quiet").split()
    for task in tasks:
        run("tasks", "kill", "--signal", "SIGKILL", task)
    time.sleep(0.5)
    for task in tasks:
        run("tasks", "delete", "--force", task)
    for c in run("containers", "list", "--quiet").split():
        run("containers", "delete", c)
