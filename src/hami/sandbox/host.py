"""What the sandbox changes on the host, recorded before it changes it and undone afterwards.

Guarantees:

* every change is first written to ``<state>/host.json`` (the *record*), so a run that was killed is
  undone by the next :meth:`HostGuard.recover` (``make demo`` and the real-node tier call it first);
* :meth:`HostGuard.restore` is idempotent and best effort: each step runs even when an earlier one
  failed, and the record is removed only when every step succeeded;
* the sandbox's addresses live on a bridge it creates (``hami0``), never on the host's own
  interfaces; the one NAT rule (the ``kubernetes`` Service IP to the API server, the part of
  kube-proxy the sandbox needs) lives in a chain of its own;
* sysctls that kubelet rewrites (``vm.overcommit_memory``, ``kernel.panic``,
  ``kernel.panic_on_oops``) and ``net.ipv4.ip_forward`` get their old values back;
* cgroup v1 roots created for nodes are emptied (processes killed) and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["BRIDGE", "FIXED_PATHS", "NAT_CHAIN", "SYSCTLS", "HostError", "HostGuard", "sysctl_path"]

BRIDGE = "hami0"
NAT_CHAIN = "HAMI-SANDBOX"
SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.ip_forward")
CGROUP_V1 = Path("/sys/fs/cgroup")
#: directories kubelet and runc use whatever their configuration says (see real-node facts), and
#: the mount points of the nodes' private directories (:data:`hami.sandbox.node.PRIVATE_DIRS`)
FIXED_PATHS = (
    "/var/lib/kubelet/device-plugins",
    "/tmp/vgpulock",
    "/run/containerd/runc",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet/pod-resources",
    "/run/cdi",
)


class HostError(RuntimeError):
    """A host change failed (the message names the command and its output)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise HostError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


class HostGuard:
    """Applies and undoes the sandbox's host changes (see the module docstring)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.record_path = state / "host.json"
        self.record: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ record

    def _save(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, sort_keys=True))
        tmp.replace(self.record_path)

    def recover(self) -> bool:
        """Undo what a previous run recorded and did not undo; True when there was something."""
        if not self.record_path.exists():
            return False
        try:
            self.record = json.loads(self.record_path.read_text())
        except ValueError:
            self.record = {}
        self.restore()
        return True

    # ------------------------------------------------------------------------------ apply

    def save_sysctls(self) -> None:
        saved = self.record.setdefault("sysctls", {})
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                saved.setdefault(name, sysctl_path(name).read_text().strip())
        self._save()

    def set_sysctl(self, name: str, value: str) -> None:
        assert name in self.record.get("sysctls", {}), f"save {name} before changing it"
        sysctl_path(name).write_text(value)

    def bridge(self, addresses: list[str]) -> None:
        """Create the bridge holding the sandbox's own addresses (``a.b.c.d/len``)."""
        self.record["bridge"] = BRIDGE
        self._save()
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        for addr in addresses:
            _run("ip", "addr", "replace", addr, "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def service_nat(self, service_ip: str, port: int, target: str) -> None:
        """DNAT ``service_ip:port`` to ``target`` (``ip:port``) for host and pod traffic alike."""
        self.record["nat_chain"] = NAT_CHAIN
        self._save()
        if _run("iptables", "-t", "nat", "-L", NAT_CHAIN, "-n", check=False).returncode != 0:
            _run("iptables", "-t", "nat", "-N", NAT_CHAIN)
        _run("iptables", "-t", "nat", "-F", NAT_CHAIN)
        rule = [
            "-d",
            f"{service_ip}/32",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-j",
            "DNAT",
            "--to-destination",
            target,
        ]
        _run("iptables", "-t", "nat", "-A", NAT_CHAIN, *rule)
        for hook in ("PREROUTING", "OUTPUT"):
            if _run("iptables", "-t", "nat", "-C", hook, "-j", NAT_CHAIN, check=False).returncode != 0:
                _run("iptables", "-t", "nat", "-I", hook, "-j", NAT_CHAIN)

    def cgroup_root(self, name: str) -> None:
        """Create ``/<name>`` in every cgroup v1 hierarchy (cpuset gets its parent's cpus and mems)."""
        roots = self.record.setdefault("cgroups", [])
        if name not in roots:
            roots.append(name)
        self._save()
        for hierarchy in self._hierarchies():
            d = hierarchy / name
            d.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((hierarchy / f).read_text())

    def fixed_paths(self) -> None:
        """Snapshot the fixed host directories kubelet and runc write to (``FIXED_PATHS``): entries
        that appear in them are removed on restore, and so is the topmost directory that did not
        exist (kubelet creates ``/var/lib/kubelet`` for its device-plugin socket directory)."""
        snap = self.record.setdefault("fixed", {})
        for path in FIXED_PATHS:
            if path in snap:
                continue
            p = Path(path)
            snap[path] = sorted(e.name for e in p.iterdir()) if p.is_dir() else None
            if snap[path] is None:
                top = p
                while not top.parent.exists():
                    top = top.parent
                self.remember("dir", str(top))
        self._save()

    def mounts_under(self, root: Path) -> None:
        """Unmount everything below ``root`` on restore (kubelet bind-mounts its root dir and pod
        volumes there)."""
        self.remember("mount_root", str(root))

    def remember(self, kind: str, value: str) -> None:
        """Record another path to remove on restore (``mount`` to unmount, ``dir`` to delete)."""
        items = self.record.setdefault(kind, [])
        if value not in items:
            items.append(value)
        self._save()

    # ------------------------------------------------------------------------------ undo

    def restore(self) -> None:
        errors: list[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except (OSError, HostError, subprocess.SubprocessError) as exc:
                errors.append(f"{what}: {exc}")

        for root in self.record.get("mount_root", []):
            for path in mounts_below(root):
                attempt(f"unmount {path}", self._unmount, path)
        for path in reversed(self.record.get("mount", [])):
            attempt(f"unmount {path}", self._unmount, path)
        for path, before in self.record.get("fixed", {}).items():
            attempt(f"clean {path}", _clean_fixed, path, before)
        for name in self.record.get("cgroups", []):
            attempt(f"cgroup {name}", self._remove_cgroup, name)
        if self.record.get("nat_chain"):
            attempt("nat", self._remove_nat)
        for link in _cni_bridges():
            attempt(f"link {link}", _run, "ip", "link", "delete", link)
        if self.record.get("bridge"):
            attempt("bridge", self._remove_bridge)
        for name, value in self.record.get("sysctls", {}).items():
            attempt(f"sysctl {name}", sysctl_path(name).write_text, value)
        for path in self.record.get("dir", []):
            attempt(f"remove {path}", shutil.rmtree, path, True)
        if errors:
            raise HostError("could not restore the host: " + "; ".join(errors))
        self.record = {}
        self.record_path.unlink(missing_ok=True)

    @staticmethod
    def _hierarchies(with_unified: bool = False) -> list[Path]:
        """The v1 hierarchies (kubelet needs its cgroup root in each); kubelet also creates it in
        the hybrid ``unified`` (v2) tree, which only removal visits."""
        if not CGROUP_V1.is_dir():
            return []
        return [
            h
            for h in sorted(CGROUP_V1.iterdir())
            if h.is_dir() and (with_unified or h.name != "unified") and (h / "cgroup.procs").exists()
        ]

    def _remove_cgroup(self, name: str) -> None:
        for hierarchy in self._hierarchies(with_unified=True):
            root = hierarchy / name
            if not root.is_dir():
                continue
            # children first; kill whatever still runs inside
            for d in [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), root]:
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    d.rmdir()

    @staticmethod
    def _remove_nat() -> None:
        for hook in ("PREROUTING", "OUTPUT"):
            while _run("iptables", "-t", "nat", "-C", hook, "-j", NAT_CHAIN, check=False).returncode == 0:
                _run("iptables", "-t", "nat", "-D", hook, "-j", NAT_CHAIN)
        if _run("iptables", "-t", "nat", "-L", NAT_CHAIN, "-n", check=False).returncode == 0:
            _run("iptables", "-t", "nat", "-F", NAT_CHAIN)
            _run("iptables", "-t", "nat", "-X", NAT_CHAIN)

    @staticmethod
    def _remove_bridge() -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            _run("ip", "link", "delete", BRIDGE)

    @staticmethod
    def _unmount(path: str) -> None:
        if _run("mountpoint", "-q", path, check=False).returncode == 0:
            _run("umount", "-l", path)


def mounts_below(root: str) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = root.rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(prefix):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def _clean_fixed(path: str, before: list[str] | None) -> None:
    p = Path(path)
    if not p.exists():
        return
    if before is None:
        shutil.rmtree(p)
        return
    for entry in p.iterdir():
        if entry.name not in before:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _cni_bridges() -> list[str]:
    """The per-node CNI bridges (``hamicni*``) the bridge plugin created."""
    out = _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith("hamicni")]
