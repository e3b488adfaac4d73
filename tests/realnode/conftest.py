"""Real-node tier: a control plane plus a real kubelet + containerd node on this machine.

One sandbox (:class:`hami.sandbox.cluster.Sandbox`) per session, with the images from
``make images`` imported. Needs root, the Kubernetes binaries (``hack/build-k8s.sh``), containerd
(``hack/build-containerd.sh``, or ``HAMI_CONTAINERD_BIN``), Debian's runc and CNI plugins
(``hack/ensure-debian-tool.sh``) and ``dist/images``; ``make test`` provides all of them and a
missing one fails the tier there (``hami.testing.prereq``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from realnode_chart import chart_installed, hami_leading, scratch_namespace

from hami.kube.client import KubeClient
from hami.sandbox.cluster import NodeSpec, Sandbox
from hami.sandbox.node import RUNC, NodeBinaries
from hami.testing.controlplane import BinariesMissingError, ControlPlaneError, find_binaries
from hami.testing.helm import Helm
from hami.testing.prereq import missing

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "dist" / "images"
#: two nodes side by side, each with its own containerd, cgroup root and mount namespace
NODES = ("node1", "node2")


def _node_binaries(k8s_dir: Path) -> NodeBinaries:
    containerd = Path(
        os.environ.get("HAMI_CONTAINERD_BIN") or Path.home() / ".cache" / "hami" / "containerd-v2.4.2"
    )
    for path, how in (
        (k8s_dir / "kubelet", "run hack/build-k8s.sh"),
        (containerd / "containerd", "run hack/build-containerd.sh or set HAMI_CONTAINERD_BIN"),
        (Path(RUNC), "apt-get install runc"),
        (Path("/usr/lib/cni/bridge"), "apt-get install containernetworking-plugins"),
    ):
        if not os.access(path, os.X_OK):
            missing(f"{path} is missing ({how})")
    return NodeBinaries(k8s_dir / "kubelet", containerd)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        missing("the real-node tier runs kubelet and containerd, which need root")
    try:
        binaries = find_binaries()
    except BinariesMissingError as exc:
        missing(str(exc))
    images = [
        sorted(IMAGES.glob(f"{name}-*.tar")) for name in ("hami", "kube-scheduler", "pause", "ubuntu-standin")
    ]
    if not all(images):
        missing(f"{IMAGES} lacks the hami, kube-scheduler, pause or ubuntu-standin image (run make images)")
    state = Path(tempfile.mkdtemp(prefix="hami-realnode-"))
    sb = Sandbox(
        state,
        binaries,
        _node_binaries(binaries.kube_apiserver.parent),
        [NodeSpec(name, {"gpu": "on"}) for name in NODES],
        images=[found[-1] for found in images],
        driver=ROOT / "native" / "build" / "fake",
    )
    try:
        sb.start()
    except ControlPlaneError as exc:
        sb.stop()
        pytest.fail(f"sandbox failed to start: {exc}", pytrace=False)
    try:
        yield sb
    finally:
        sb.stop()
        if os.environ.get("HAMI_KEEP_SANDBOX") != "1":
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
async def kc(sandbox: Sandbox) -> AsyncIterator[KubeClient]:
    async with KubeClient(sandbox.kube_config()) as client:
        yield client


@pytest.fixture
async def ns(kc: KubeClient) -> AsyncIterator[str]:
    """A fresh namespace (see :func:`realnode_chart.scratch_namespace`)."""
    async with scratch_namespace(kc) as name:
        yield name


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    """The chart installed into the sandbox with its default values (uninstalled again at the end
    of the module); a module that needs other values defines its own ``installed``."""
    with chart_installed(sandbox) as helm:
        yield helm


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> None:
    """The module's chart installed, and hami leading (see :func:`realnode_chart.hami_leading`)."""
    await hami_leading(kc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    sb = getattr(item, "funcargs", {}).get("sandbox")
    if report.failed and isinstance(sb, Sandbox):
        report.sections.append(("sandbox logs", sb.logs_tail(15)))
