"""The sandbox's stand-in for ``ubuntu:18.04`` / ``ubuntu:22.04``: Debian's static busybox.

HAMi's example manifests run ``image: ubuntu:18.04`` with ``bash -c "sleep 86400"``. There is no
registry here, so the sandbox imports this image under those names: busybox (Debian bookworm's
``busybox-static``, pinned in ``images/standin.lock``) with its applets linked into ``/usr/bin``,
and ``/usr/bin/bash`` a tiny static program (``images/sandbox/bash.c``) that runs busybox's ``sh``.
It is a stand-in for running the examples unchanged, not an Ubuntu image.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ocibuild import debs, layer, oci, rootfs

REPOSITORY = "hami.local/ubuntu-standin"
TAG = "1"
#: the names the image is also imported under (what HAMi's examples ask for)
ALSO = ("docker.io/library/ubuntu:18.04", "docker.io/library/ubuntu:22.04")
BUSYBOX = "usr/bin/busybox"


class StandinBuildError(Exception):
    """busybox did not list its applets."""


@dataclass(frozen=True)
class StandinInputs:
    lock: Path
    bash_source: Path
    deb_cache: Path
    epoch: int
    labels: dict[str, str]


def build(inputs: StandinInputs, work: Path, out: Path) -> oci.Archive:
    tree, blobs = rootfs.staging(work, "rootfs")
    rootfs.base_files(tree)
    for deb in debs.read_lock(inputs.lock):
        debs.unpack(
            debs.fetch(deb, inputs.deb_cache), tree, lambda name: name not in ("usr", "usr/bin", BUSYBOX)
        )
    rootfs.merged_usr_links(tree)
    applets = subprocess.run(
        [str(tree / BUSYBOX), "--list"], capture_output=True, text=True, check=False
    ).stdout.split()
    if "sh" not in applets or "sleep" not in applets:
        raise StandinBuildError(f"{BUSYBOX} --list: no sh/sleep applet in {applets[:10]}")
    for applet in applets:
        link = tree / "usr" / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    bash = tree / "usr" / "bin" / "bash"
    bash.unlink(missing_ok=True)
    rootfs.compile_static(inputs.bash_source, bash)
    written = layer.write_layer(tree, blobs / "standin.tar.gz", mtime=inputs.epoch)
    spec = oci.ImageSpec(
        repository=REPOSITORY,
        tag=TAG,
        also=ALSO,
        layers=[oci.LayerSpec(written, "ocibuild: busybox-static as an ubuntu stand-in")],
        entrypoint=[],
        cmd=["sh"],
        user="0:0",
        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
        created=inputs.epoch,
        labels=inputs.labels,
    )
    return oci.write_archive(spec, out)
