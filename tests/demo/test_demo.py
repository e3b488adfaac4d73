"""`make demo` and `make demo-down` as a user runs them: the sandbox comes up with two nodes, hami is
installed by helm, the demo workload is placed and explained, a second `up` reuses the running
cluster, and `down` leaves the host exactly as it was before (bridges, NAT chain, sysctls, fixed
directories, cgroup roots, mounts).

Runs before the real-node tier (``testpaths``): the two use the same addresses and must never run at
the same time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from hami.sandbox.host import BRIDGE, FIXED_PATHS, NAT_CHAIN, SYSCTLS, sysctl_path
from hami.testing.prereq import missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HAMI = ROOT / ".venv" / "bin" / "hami"


def _host() -> dict[str, Any]:
    """What the sandbox may change on this host, as comparable values."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=False).stdout
    cgroups = sorted(str(d) for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir() for d in h.glob("hami-*"))
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f)
    return {
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines() if "hami" in line),
        "nat": [line for line in nat.splitlines() if NAT_CHAIN in line],
        "sysctls": {name: sysctl_path(name).read_text().strip() for name in SYSCTLS},
        "fixed": {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in FIXED_PATHS},
        "kubelet_dir": os.path.exists("/var/lib/kubelet"),
        "cgroups": cgroups,
        "mounts": mounts,
    }


def _tools() -> list[str]:
    paths = []
    for script, what in (
        ("hack/build-k8s.sh", "HAMI_K8S_BIN"),
        ("hack/build-containerd.sh", "HAMI_CONTAINERD_BIN"),
        ("hack/build-helm.sh", "HAMI_HELM"),
    ):
        path = os.environ.get(what)
        if not path:
            missing(f"{what} is not set (make test sets it from {script})")
        paths.append(path)
    return paths


def test_demo_up_reuse_and_down_restore_the_host() -> None:
    if os.geteuid() != 0:
        missing("the demo runs kubelet and containerd, which need root")
    k8s, containerd, helm = _tools()
    images = ROOT / "dist" / "images"
    if not all(sorted(images.glob(f"{n}-*.tar")) for n in ("hami", "kube-scheduler", "pause")):
        missing(f"{images} lacks an image (run make images)")
    before = _host()
    state = Path(tempfile.mkdtemp(prefix="hami-demo-"))
    up = [
        str(HAMI), "sandbox", "up", "--state", str(state), "--repo", str(ROOT),
        "--k8s-bin", k8s, "--containerd-bin", containerd, "--helm", helm,
    ]  # fmt: skip
    try:
        first = subprocess.run(up, capture_output=True, text=True, timeout=600, check=False)
        assert first.returncode == 0, first.stdout + first.stderr
        table = first.stdout.splitlines()
        header = next(i for i, line in enumerate(table) if line.startswith("POD "))
        end = table.index("", header)
        rows = {line.split()[0]: line.split() for line in table[header + 1 : end]}
        running = {"nvlink-pair", "share-a", "share-b", "quarter", "whole-card", "l4-only"}
        assert {name for name, row in rows.items() if row[1] == "Running"} == running, first.stdout
        assert rows["l4-only"][2] == "node2" and rows["nvlink-pair"][2] == "node1", first.stdout
        assert rows["share-a"][3] == rows["share-b"][3], first.stdout  # one card, shared
        assert rows["too-big"][1] == "Pending" and "100000 MiB" in " ".join(rows["too-big"]), first.stdout
        for name in running:
            assert "CUDA sees" in " ".join(rows[name]) and "over it refused" in " ".join(rows[name])
        assert f"KUBECONFIG={state / 'control-plane' / 'kubeconfig'}" in first.stdout
        assert "port-forward svc/hami-webui 8090" in first.stdout  # the web UI is on in the demo
        assert "starting the sandbox" in first.stderr and "done in" in first.stderr

        again = subprocess.run(up, capture_output=True, text=True, timeout=300, check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "reusing the sandbox" in again.stderr and "starting the sandbox" not in again.stderr
    finally:
        down = subprocess.run(
            [str(HAMI), "sandbox", "down", "--state", str(state)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert down.returncode == 0 and "host restored" in down.stdout, down.stdout + down.stderr
    assert not state.exists()
    assert not any(BRIDGE in link for link in _host()["links"])
    assert _host() == before
