"""A real, throw-away Kubernetes control plane for integration tests, e2e tests and benchmarks.

Starts etcd + kube-apiserver (and, on demand, any number of kube-scheduler processes) on free
loopback ports with a generated PKI, writes an admin kubeconfig (client certificate in
``system:masters``), and tears everything down again (process groups killed, temp dirs removed).

Binaries: ``$HAMI_K8S_BIN`` (a directory holding ``kube-apiserver`` and ``kube-scheduler``), else
``~/.cache/hami/k8s-v1.34.4`` (built by ``hack/build-k8s.sh``); etcd from ``$HAMI_ETCD`` else
``etcd`` on ``PATH`` (Debian ``etcd-server``, see ``hack/ensure-etcd.sh``).

::

    with ControlPlane() as cp:                       # blocks until /readyz is ok
        cfg = cp.kube_config()                       # hami.kube.config.KubeConfig (admin)
        sched = cp.start_scheduler(EXTENDER_CONFIG)  # KubeSchedulerConfiguration YAML/dict
        ...
        sched.stop()

Every component logs to ``<workdir>/logs/<name>.log``; :meth:`ControlPlane.logs_tail` returns the
tails for failure reports. Set ``HAMI_KEEP_CONTROLPLANE=1`` to keep the work directory.

The API server runs with ``--watch-cache-sizes=podtemplates#0``: PodTemplates are watched
straight from etcd, so a test can force a real ``410 Gone`` by compacting etcd
(:meth:`ControlPlane.compact_etcd`) while a watcher is disconnected. Everything else uses the
watch cache as in production (bookmarks, etc.).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from hami.kube.config import KubeConfig, load_kubeconfig
from hami.testing.pki import CertificateAuthority, KeyPair, rsa_key_pair

__all__ = [
    "DEFAULT_K8S_VERSION",
    "DRA_FEATURE_GATES",
    "Binaries",
    "BinariesMissingError",
    "ControlPlane",
    "ControlPlaneError",
    "Lifecycle",
    "Process",
    "SchedulerHandle",
    "feature_gates_flag",
    "find_binaries",
    "free_port",
]

DEFAULT_K8S_VERSION = "v1.34.4"

#: Feature gates every component of a control plane runs with unless told otherwise. DRA itself
#: (`DynamicResourceAllocation`, resource.k8s.io/v1) is GA and on in 1.34; consumable capacity
#: (several claims sharing one device's memory and cores, what `hami dra-plugin` publishes) is
#: alpha in 1.34 and on by default only from 1.36. It is on everywhere rather than per test: the
#: gate only adds fields to resource.k8s.io objects, and one cluster shape for the integration
#: tier, the sandbox and benchmarks is what a 1.36 cluster looks like. Partitionable devices
#: (shared counters: a MIG-capable card's MIG placements beside the whole card) are alpha in 1.34
#: too and on here for the same reason.
DRA_FEATURE_GATES: Mapping[str, bool] = {"DRAConsumableCapacity": True, "DRAPartitionableDevices": True}


def feature_gates_flag(gates: Mapping[str, bool]) -> list[str]:
    """``--feature-gates=A=true,B=false`` (sorted), or nothing for no gates."""
    if not gates:
        return []
    return ["--feature-gates=" + ",".join(f"{k}={str(v).lower()}" for k, v in sorted(gates.items()))]


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready (the message carries its log tail)."""


class BinariesMissingError(ControlPlaneError):
    """etcd, kube-apiserver or kube-scheduler could not be found."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path


def find_binaries(k8s_bin: str | os.PathLike[str] | None = None, etcd: str | None = None) -> Binaries:
    """Locate the three binaries or raise :class:`BinariesMissingError` saying how to get them."""
    k8s_dir = Path(
        k8s_bin
        or os.environ.get("HAMI_K8S_BIN")
        or Path.home() / ".cache" / "hami" / f"k8s-{DEFAULT_K8S_VERSION}"
    ).expanduser()
    etcd_path = etcd or os.environ.get("HAMI_ETCD") or shutil.which("etcd")
    problems = []
    apiserver, scheduler = k8s_dir / "kube-apiserver", k8s_dir / "kube-scheduler"
    for b in (apiserver, scheduler):
        if not os.access(b, os.X_OK):
            problems.append(f"{b} is missing (run hack/build-k8s.sh, or set HAMI_K8S_BIN to a directory)")
    if not etcd_path or not os.access(etcd_path, os.X_OK):
        problems.append(
            "etcd not found (run hack/ensure-etcd.sh / apt-get install etcd-server, or set HAMI_ETCD)"
        )
    if problems:
        raise BinariesMissingError("integration control plane unavailable: " + "; ".join(problems))
    assert etcd_path is not None
    return Binaries(Path(etcd_path), apiserver, scheduler)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # PR_SET_PDEATHSIG: if the test process is SIGKILLed, take the component down too. The signal
    # fires when the *thread* that forked exits, so this is only used from the main thread.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Process:
    """One component process in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        detach: bool = False,
    ):
        """``detach``: the process outlives this one (no parent-death signal); stop it by pid."""
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} starting {name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread() and not detach
                else None,
                env=dict(env) if env is not None else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``timeout`` (idempotent)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Reap anything left in the group (no-op when the group is gone).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the process group at once (simulates a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)

    def tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_http(
    url: str,
    ctx: ssl.SSLContext | None,
    proc: Process,
    timeout: float,
    ok: Iterable[int] = (200,),
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    ok_codes = set(ok)
    while time.monotonic() < deadline:
        if not proc.alive:
            raise ControlPlaneError(
                f"{proc.name} exited with {proc.popen.returncode} while starting; log tail:\n{proc.tail()}"
            )
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                if resp.status in ok_codes:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in ok_codes:
                return
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise ControlPlaneError(
        f"{proc.name} not ready at {url} after {timeout:.0f}s ({last}); log tail:\n{proc.tail()}"
    )


class SchedulerHandle:
    """A running kube-scheduler. :meth:`stop` / :meth:`kill` / :meth:`restart` it at will."""

    def __init__(self, cp: ControlPlane, name: str, config_path: Path, extra_args: Sequence[str]):
        self._cp = cp
        self.name = name
        self.config_path = config_path
        self.extra_args = list(extra_args)
        self.port = 0
        self.process: Process | None = None

    def start(self, timeout: float = 60.0) -> Self:
        if self.process is not None and self.process.alive:
            return self
        self.port = free_port()
        certs = self._cp.workdir / self.name / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self._cp.binaries.kube_scheduler),
            f"--config={self.config_path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={certs}",
            f"--authentication-kubeconfig={self._cp.kubeconfig_path}",
            f"--authorization-kubeconfig={self._cp.kubeconfig_path}",
            *feature_gates_flag(self._cp.feature_gates),
            *self.extra_args,
        ]
        self.process = Process(self.name, argv, self._cp.logdir / f"{self.name}.log", detach=self._cp.detach)
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        try:
            _wait_http(f"https://127.0.0.1:{self.port}/healthz", insecure, self.process, timeout)
        except ControlPlaneError:
            self.process.stop()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self, timeout: float = 60.0) -> Self:
        self.stop()
        return self.start(timeout)

    def tail(self, lines: int = 80) -> str:
        return self.process.tail(lines) if self.process is not None else ""


class Lifecycle:
    """``with x:`` starts ``x`` — stopping it again when the start fails part way — and stops it
    on exit. Subclasses define :meth:`start` (returning self) and an idempotent :meth:`stop`."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ControlPlane(Lifecycle):
    """etcd + kube-apiserver on loopback, plus kube-schedulers started on demand.

    :param apiserver_args: extra ``kube-apiserver`` flags (appended, so they override defaults).
    :param workdir: where PKI, kubeconfig, configs and logs go (default: a new temp dir).
    :param host: the address kube-apiserver binds, advertises and is reached at (loopback by default;
        the sandbox gives it an address on its own bridge so that pods on real nodes reach it).
    :param disabled_admission: admission plugins switched off (the sandbox, which runs the service
        account controller, keeps ``ServiceAccount`` on).
    :param feature_gates: gates the API server, every scheduler and the controller manager run
        with (default `DRA_FEATURE_GATES`; explicit ``--feature-gates`` in extra args add to them).
    :param client_certs: more client certificates to issue before the API server starts (for flags
        such as ``--kubelet-client-certificate`` that name them).
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        apiserver_args: Sequence[str] = (),
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 120.0,
        host: str = "127.0.0.1",
        client_certs: Mapping[str, tuple[str, Sequence[str]]] | None = None,
        disabled_admission: Sequence[str] = ("ServiceAccount", "TaintNodesByCondition"),
        detach: bool = False,
        feature_gates: Mapping[str, bool] = DRA_FEATURE_GATES,
    ) -> None:
        self.binaries = binaries or find_binaries()
        self.feature_gates = dict(feature_gates)
        self.host = host
        #: file stem -> (user, groups): more client certificates written to ``pki/<stem>.{crt,key}``
        self.client_certs = dict(client_certs or {})
        self.disabled_admission = list(disabled_admission)
        #: components outlive this process (the sandbox behind `make demo`): no parent-death signal,
        #: no stop at exit, etcd's data under ``workdir``
        self.detach = detach
        self.apiserver_args = list(apiserver_args)
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hami-cp-"))
        self.logdir = self.workdir / "logs"
        self.pki = self.workdir / "pki"
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
        if detach:
            self._etcd_dir = self.workdir / "etcd"
            self._etcd_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._etcd_dir = Path(tempfile.mkdtemp(prefix="hami-etcd-", dir=base))
        self.etcd: Process | None = None
        self.apiserver: Process | None = None
        self.controller_manager: Process | None = None
        self.schedulers: list[SchedulerHandle] = []
        self.etcd_port = 0
        self.apiserver_port = 0
        self.server = ""
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.ca: CertificateAuthority | None = None
        self.admin: KeyPair | None = None
        self._stopped = False

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start etcd and kube-apiserver and wait until the API is ready (raises ControlPlaneError)."""
        if not self.detach:
            atexit.register(self.stop)
        self._write_pki()
        self._start_etcd()
        self._start_apiserver()
        return self

    def stop(self) -> None:
        """Stop every component and remove the temp dirs (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        for s in self.schedulers:
            s.stop()
        for p in (self.controller_manager, self.apiserver, self.etcd):
            if p is not None:
                p.stop()
        shutil.rmtree(self._etcd_dir, ignore_errors=True)
        if self._own_workdir and os.environ.get("HAMI_KEEP_CONTROLPLANE") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def _write_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.create("hami-test-ca")
        (self.pki / "ca.crt").write_bytes(self.ca.cert_pem)
        serving = self.ca.issue(
            "kube-apiserver",
            dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ips=sorted({"127.0.0.1", "10.0.0.1", self.host}),
        )
        serving.write(self.pki, "apiserver")
        self.admin = self.ca.issue("hami-admin", organizations=["system:masters"], client=True)
        self.admin.write(self.pki, "admin")
        for stem, (user, groups) in self.client_certs.items():
            self.ca.issue(user, organizations=list(groups), client=True).write(self.pki, stem)
        sa_key, sa_pub = rsa_key_pair()
        (self.pki / "sa.key").write_bytes(sa_key)
        (self.pki / "sa.key").chmod(0o600)
        (self.pki / "sa.pub").write_bytes(sa_pub)

    def _start_etcd(self) -> None:
        self.etcd_port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        argv = [
            str(self.binaries.etcd),
            "--name=default",
            f"--data-dir={self._etcd_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--initial-cluster-state=new",
            "--enable-v2=false",
            "--logger=zap",
            "--log-level=warn",
            "--quota-backend-bytes=8589934592",
        ]
        self.etcd = Process("etcd", argv, self.logdir / "etcd.log", detach=self.detach)
        _wait_http(f"{client_url}/health", None, self.etcd, 30)

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def _start_apiserver(self) -> None:
        self.apiserver_port = free_port()
        self.server = f"https://{self.host}:{self.apiserver_port}"
        pki = self.pki
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            # by default no ServiceAccount controller runs; no node controller lifts the not-ready
            # taint either
            f"--disable-admission-plugins={','.join(self.disabled_admission)}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--watch-cache-sizes=podtemplates#0",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            *feature_gates_flag(self.feature_gates),
            *self.apiserver_args,
        ]
        self.apiserver = Process(
            "kube-apiserver", argv, self.logdir / "kube-apiserver.log", detach=self.detach
        )
        self.write_kubeconfig(self.kubeconfig_path, self.admin)
        ctx = self.kube_config().ssl_context()
        _wait_http(f"{self.server}/readyz", ctx, self.apiserver, self.start_timeout)
        # The bootstrap controller creates the "default" namespace shortly after /readyz.
        _wait_http(f"{self.server}/api/v1/namespaces/default", ctx, self.apiserver, 30)

    # ------------------------------------------------------------------------------ access

    def write_kubeconfig(self, path: Path, pair: KeyPair | None) -> None:
        """A kubeconfig (mode 0600) for this API server that authenticates with ``pair``."""
        assert self.ca is not None and pair is not None

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "hami-test",
                    "cluster": {"server": self.server, "certificate-authority-data": b64(self.ca.cert_pem)},
                }
            ],
            "users": [
                {
                    "name": "user",
                    "user": {
                        "client-certificate-data": b64(pair.cert_pem),
                        "client-key-data": b64(pair.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "hami-test", "context": {"cluster": "hami-test", "user": "user"}}],
            "current-context": "hami-test",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)

    def kube_config(self) -> KubeConfig:
        """Admin :class:`~hami.kube.config.KubeConfig` (client cert in ``system:masters``)."""
        return load_kubeconfig(self.kubeconfig_path)

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Write a kubeconfig for another identity (for RBAC tests); returns its path."""
        assert self.ca is not None
        pair = self.ca.issue(user, organizations=list(groups), client=True)
        path = self.workdir / f"kubeconfig-{user.replace(':', '_')}"
        self.write_kubeconfig(path, pair)
        return path

    @property
    def ca_pem(self) -> bytes:
        assert self.ca is not None
        return self.ca.cert_pem

    # ------------------------------------------------------------------------------ scheduler

    def start_scheduler(
        self,
        config: str | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> SchedulerHandle:
        """Start a kube-scheduler with a ``KubeSchedulerConfiguration`` (YAML text or dict).

        ``clientConnection.kubeconfig`` is filled in with the admin kubeconfig and
        ``leaderElection.leaderElect`` defaults to false when the config leaves them out.
        ``None`` means the default profile (schedulerName ``default-scheduler``). Returns once
        ``/healthz`` answers; the handle can be stopped, killed and restarted.
        """
        doc: dict[str, Any]
        if config is None:
            doc = {}
        elif isinstance(config, str):
            loaded = yaml.safe_load(config)
            if not isinstance(loaded, dict):
                raise ValueError("scheduler config must be a YAML mapping")
            doc = loaded
        else:
            doc = json.loads(json.dumps(config))
        doc.setdefault("apiVersion", "kubescheduler.config.k8s.io/v1")
        doc.setdefault("kind", "KubeSchedulerConfiguration")
        doc.setdefault("clientConnection", {}).setdefault("kubeconfig", str(self.kubeconfig_path))
        doc.setdefault("leaderElection", {}).setdefault("leaderElect", False)
        name = name or f"kube-scheduler-{len(self.schedulers)}"
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        handle = SchedulerHandle(self, name, path, extra_args)
        self.schedulers.append(handle)
        return handle.start(timeout)

    # ------------------------------------------------------------------------------ etcd tools

    def _etcd_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.etcd_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def etcd_revision(self) -> int:
        """etcd's current revision (= the newest resourceVersion)."""
        out = self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        return int(out["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision, so any older resourceVersion is gone; returns it."""
        rev = self.etcd_revision()
        self._etcd_post("/v3/kv/compaction", {"revision": rev, "physical": True})
        return rev

    # ------------------------------------------------------------------------------ diagnostics

    def start_controller_manager(self, controllers: Sequence[str], extra_args: Sequence[str] = ()) -> Process:
        """Start kube-controller-manager running ``controllers`` (stopped with the control plane)."""
        binary = self.binaries.kube_apiserver.parent / "kube-controller-manager"
        if not os.access(binary, os.X_OK):
            raise BinariesMissingError(f"{binary} is missing (run hack/build-k8s.sh)")
        argv = [
            str(binary),
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            f"--controllers={','.join(controllers)}",
            *feature_gates_flag(self.feature_gates),
            *extra_args,
        ]
        self.controller_manager = Process(
            "kube-controller-manager", argv, self.logdir / "kube-controller-manager.log", detach=self.detach
        )
        return self.controller_manager

    def processes(self) -> list[Process]:
        procs = [p for p in (self.etcd, self.apiserver, self.controller_manager) if p is not None]
        procs += [s.process for s in self.schedulers if s.process is not None]
        return procs

    def logs_tail(self, lines: int = 60) -> str:
        """Last ``lines`` of every component's log, for failure reports."""
        parts = []
        for p in self.processes():
            state = "running" if p.alive else f"exited {p.popen.returncode}"
            parts.append(f"---- {p.name} ({state}) {p.log_path}\n{p.tail(lines)}")
        return "\n".join(parts)
