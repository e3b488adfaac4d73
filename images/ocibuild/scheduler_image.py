"""The kube-scheduler image: the same static kube-scheduler binary the tests run, and nothing else.

One layer: /usr/local/bin/kube-scheduler (built by hack/build-k8s.sh with CGO off, -trimpath and a
fixed build date, so it needs no C library), /etc/passwd and /etc/group naming the non-root user,
and /tmp. No CA certificates: it talks only to the API server, whose CA comes from its kubeconfig.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ocibuild import layer, oci, rootfs

BINARY = "usr/local/bin/kube-scheduler"
ENV = ("PATH=/usr/local/bin:/usr/bin",)


@dataclass(frozen=True)
class SchedulerInputs:
    """The binary, its version (the image tag) and the image metadata."""

    binary: Path
    version: str
    epoch: int
    labels: dict[str, str]


def build(inputs: SchedulerInputs, work: Path, out: Path) -> oci.Archive:
    """Stage the layer tree under `work` and write the image archive to `out`."""
    tree, blobs = rootfs.staging(work, "kube-scheduler")
    rootfs.base_files(tree)
    rootfs.make_dirs(tree, "usr/local/bin")
    shutil.copyfile(inputs.binary, tree / BINARY)
    (tree / BINARY).chmod(0o755)
    written = layer.write_layer(
        tree, blobs / "kube-scheduler.tar.gz", mtime=inputs.epoch, owners=rootfs.OWNERS
    )
    spec = oci.ImageSpec(
        repository="hami.local/kube-scheduler",
        tag=inputs.version,
        layers=[oci.LayerSpec(written, "ocibuild: kube-scheduler")],
        entrypoint=["/" + BINARY],
        user=f"{rootfs.NONROOT_UID}:{rootfs.NONROOT_UID}",
        env=ENV,
        created=inputs.epoch,
        labels=inputs.labels,
    )
    return oci.write_archive(spec, out)
