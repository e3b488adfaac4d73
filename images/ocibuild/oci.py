"""One image archive that both `ctr images import` (OCI layout) and `docker load` (manifest.json) take.

The tar holds `oci-layout`, `index.json` (one manifest, annotated with `io.containerd.image.name`
= the full reference and `org.opencontainers.image.ref.name` = the tag), `blobs/sha256/<hex>` for
the config, the manifest and each layer, and a docker-archive `manifest.json` whose `Config` and
`Layers` name the same blobs. containerd prefers the OCI layout when `oci-layout` is present;
docker reads `manifest.json`. JSON documents are written with sorted keys and no spaces, the tar
with sorted entries, mtime SOURCE_DATE_EPOCH and owner 0:0, so equal inputs give equal bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocibuild.layer import Layer

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class LayerSpec:
    """A written layer and the line describing it in the config's history."""

    layer: Layer
    created_by: str


@dataclass(frozen=True)
class ImageSpec:
    """What goes into the image config besides the layers."""

    repository: str  # e.g. hami.local/hami
    tag: str
    layers: Sequence[LayerSpec]
    entrypoint: Sequence[str]
    user: str
    env: Sequence[str]
    created: int  # SOURCE_DATE_EPOCH
    labels: Mapping[str, str] = field(default_factory=dict)
    cmd: Sequence[str] = ()
    workdir: str = "/"
    #: more full references the archive names the same image by
    also: Sequence[str] = ()

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def references(self) -> list[str]:
        return [self.reference, *self.also]


@dataclass(frozen=True)
class Archive:
    """The written archive and the digests a user or a test refers to."""

    path: Path
    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]


def canonical_json(doc: Any) -> bytes:
    """JSON with sorted keys and no insignificant whitespace: the bytes a digest is taken over."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def config_document(spec: ImageSpec) -> dict[str, Any]:
    """The OCI image config (also valid as a docker image config)."""
    created = _rfc3339(spec.created)
    config: dict[str, Any] = {
        "User": spec.user,
        "Entrypoint": list(spec.entrypoint),
        "Env": list(spec.env),
        "WorkingDir": spec.workdir,
        "Labels": dict(spec.labels),
    }
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [ls.layer.diff_id for ls in spec.layers]},
        "history": [{"created": created, "created_by": ls.created_by} for ls in spec.layers],
    }


def write_archive(spec: ImageSpec, out: Path) -> Archive:
    """Write the image archive for `spec` to `out` (replacing it) and return its digests."""
    config = canonical_json(config_document(spec))
    config_digest = _digest(config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": ls.layer.digest, "size": ls.layer.size}
                for ls in spec.layers
            ],
            "annotations": dict(spec.labels),
        }
    )
    manifest_digest = _digest(manifest)
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {IMAGE_NAME_ANNOTATION: ref, REF_NAME_ANNOTATION: ref.rsplit(":", 1)[1]},
                }
                for ref in spec.references
            ],
        }
    )
    docker_manifest = canonical_json(
        [
            {
                "Config": _blob_name(config_digest),
                "RepoTags": spec.references,
                "Layers": [_blob_name(ls.layer.digest) for ls in spec.layers],
            }
        ]
    )
    blobs: dict[str, bytes | Path] = {config_digest: config, manifest_digest: manifest}
    for ls in spec.layers:
        blobs[ls.layer.digest] = ls.layer.path
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        _add_dir(tar, "blobs", spec.created)
        _add_dir(tar, "blobs/sha256", spec.created)
        for digest in sorted(blobs):
            content = blobs[digest]
            if isinstance(content, Path):
                info = _info(_blob_name(digest), spec.created, content.stat().st_size)
                with content.open("rb") as f:
                    tar.addfile(info, f)
            else:
                _add_bytes(tar, _blob_name(digest), content, spec.created)
        _add_bytes(tar, "index.json", index, spec.created)
        _add_bytes(tar, "manifest.json", docker_manifest, spec.created)
        _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), spec.created)
    tmp.replace(out)
    return Archive(out, manifest_digest, config_digest, tuple(ls.layer for ls in spec.layers))


def _info(name: str, mtime: int, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = size
    return info


def _add_dir(tar: tarfile.TarFile, name: str, mtime: int) -> None:
    tar.addfile(_info(name, mtime, directory=True))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    tar.addfile(_info(name, mtime, len(data)), io.BytesIO(data))
