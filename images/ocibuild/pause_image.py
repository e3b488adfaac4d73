"""The pod sandbox ("pause") image the sandbox's containerd pins: one static binary, nothing else.

There is no registry to pull ``registry.k8s.io/pause`` from, so the sandbox builds its own from
``images/sandbox/pause.c`` (it holds the pod's namespaces and reaps orphans until SIGTERM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocibuild import layer, oci, rootfs

REPOSITORY = "hami.local/pause"
TAG = "3.10"
#: the conventional pause user (nobody in every distribution's numbering)
USER = "65535:65535"


@dataclass(frozen=True)
class PauseInputs:
    source: Path
    epoch: int
    labels: dict[str, str]


def build(inputs: PauseInputs, work: Path, out: Path) -> oci.Archive:
    tree, blobs = rootfs.staging(work, "pause")
    rootfs.compile_static(inputs.source, tree / "pause")
    rootfs.make_dirs(tree, "tmp", mode=0o1777)
    written = layer.write_layer(tree, blobs / "pause.tar.gz", mtime=inputs.epoch)
    spec = oci.ImageSpec(
        repository=REPOSITORY,
        tag=TAG,
        layers=[oci.LayerSpec(written, "ocibuild: pause")],
        entrypoint=["/pause"],
        user=USER,
        env=(),
        created=inputs.epoch,
        labels=inputs.labels,
    )
    return oci.write_archive(spec, out)
