"""The image archives of `make images`: structure, runnability in a chroot, size, reproducibility.

The archives are read with tarfile/json here, independently of the builder (images/ocibuild), so a
builder bug cannot hide itself. Running the image needs root (chroot), as CI has.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "dist" / "images"
K8S_VERSION = "v1.34.4"
NONROOT = 65532
HAMI_SIZE_LIMIT = 150 * 1000 * 1000


def version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        v = tomllib.load(f)["project"]["version"]
    assert isinstance(v, str)
    return v


HAMI = (f"hami-{version()}.tar", f"hami.local/hami:{version()}", version())
SCHEDULER = (f"kube-scheduler-{K8S_VERSION}.tar", f"hami.local/kube-scheduler:{K8S_VERSION}", K8S_VERSION)


@dataclass
class Image:
    path: Path
    files: dict[str, bytes]  # small JSON documents by archive path
    digests: dict[str, tuple[str, int]]  # archive path -> (sha256:..., size)
    members: list[tarfile.TarInfo]

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])

    def blob(self, digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")

    def manifest(self) -> Any:
        return json.loads(self.files[self.blob(self.json("index.json")["manifests"][0]["digest"])])

    def config(self) -> Any:
        return json.loads(self.files[self.blob(self.manifest()["config"]["digest"])])


def load(path: Path) -> Image:
    if not path.is_file():
        pytest.fail(f"{path} missing: run `make images` (make test does it first)")
    files: dict[str, bytes] = {}
    digests: dict[str, tuple[str, int]] = {}
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for m in members:
            if not m.isfile():
                continue
            f = tar.extractfile(m)
            assert f is not None
            h = hashlib.sha256()
            data = b""
            while chunk := f.read(1 << 20):
                h.update(chunk)
                if m.size < 1 << 20:
                    data += chunk
            digests[m.name] = (f"sha256:{h.hexdigest()}", m.size)
            if m.size < 1 << 20:
                files[m.name] = data
    return Image(path, files, digests, members)


@pytest.fixture(scope="module", params=[HAMI, SCHEDULER], ids=["hami", "kube-scheduler"])
def image(request: pytest.FixtureRequest) -> tuple[Image, str, str]:
    name, ref, tag = request.param
    return load(IMAGES / name), ref, tag


def test_index_manifest_config_and_blobs_agree(image: tuple[Image, str, str]) -> None:
    img, ref, tag = image
    assert img.json("oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = img.json("index.json")
    [entry] = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"] == {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": tag,
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert img.digests[img.blob(entry["digest"])] == (entry["digest"], entry["size"])
    manifest = img.manifest()
    referenced = [manifest["config"], *manifest["layers"]]
    for desc in referenced:
        assert img.digests[img.blob(desc["digest"])] == (desc["digest"], desc["size"]), desc
    assert {d["mediaType"] for d in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    # every blob in the archive is the index's manifest or something it references
    blobs = {n for n in img.digests if n.startswith("blobs/")}
    assert blobs == {img.blob(entry["digest"])} | {img.blob(d["digest"]) for d in referenced}
    # docker load reads manifest.json: the same config and layers, tagged with the same name
    [docker] = img.json("manifest.json")
    assert docker == {
        "Config": img.blob(manifest["config"]["digest"]),
        "RepoTags": [ref],
        "Layers": [img.blob(d["digest"]) for d in manifest["layers"]],
    }


def test_diff_ids_are_the_uncompressed_layers(image: tuple[Image, str, str]) -> None:
    img, _, _ = image
    diff_ids = []
    with tarfile.open(img.path) as tar:
        for desc in img.manifest()["layers"]:
            f = tar.extractfile(img.blob(desc["digest"]))
            assert f is not None
            h = hashlib.sha256()
            with gzip.GzipFile(fileobj=f) as gz:
                while chunk := gz.read(1 << 20):
                    h.update(chunk)
            diff_ids.append(f"sha256:{h.hexdigest()}")
    assert img.config()["rootfs"] == {"type": "layers", "diff_ids": diff_ids}


def test_config_runs_as_nonroot_with_entrypoint_env_and_labels(image: tuple[Image, str, str]) -> None:
    img, _, tag = image
    config = img.config()
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    c = config["config"]
    assert c["User"] == f"{NONROOT}:{NONROOT}"
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == tag
    assert img.manifest()["annotations"] == labels
    path = next(e for e in c["Env"] if e.startswith("PATH="))
    if tag == K8S_VERSION:
        assert c["Entrypoint"] == ["/usr/local/bin/kube-scheduler"]
    else:
        assert c["Entrypoint"] == ["hami"]
        assert path.startswith("PATH=/opt/hami/bin:")
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if revision.returncode == 0:
        assert labels["org.opencontainers.image.revision"].startswith(revision.stdout.strip())


def test_archive_and_layer_entries_are_normalised(image: tuple[Image, str, str]) -> None:
    img, _, _ = image
    mtimes = {m.mtime for m in img.members}
    assert len(mtimes) == 1
    assert {(m.uid, m.gid, m.uname, m.gname) for m in img.members} == {(0, 0, "", "")}
    with tarfile.open(img.path) as tar:
        for desc in img.manifest()["layers"]:
            f = tar.extractfile(img.blob(desc["digest"]))
            assert f is not None
            with tarfile.open(fileobj=f, mode="r:gz") as layer:
                entries = layer.getmembers()
            names = [m.name for m in entries]
            assert names == sorted(names, key=lambda n: n.split("/")), "entries not in sorted walk order"
            assert {m.mtime for m in entries} == mtimes
            owners = {m.name: (m.uid, m.gid) for m in entries if (m.uid, m.gid) != (0, 0)}
            assert set(owners.values()) <= {(NONROOT, NONROOT)}
            assert set(owners) <= {"home/nonroot"}


# --- the images run --------------------------------------------------------------------------


def unpack(img: Image, root: Path) -> Path:
    root.mkdir()
    with tarfile.open(img.path) as tar:
        for desc in img.manifest()["layers"]:
            f = tar.extractfile(img.blob(desc["digest"]))
            assert f is not None
            with tarfile.open(fileobj=f, mode="r:gz") as layer:
                # our own archive: keep owners, modes (sticky /tmp) and absolute symlinks as they are
                layer.extractall(root, filter="fully_trusted")
    return root


def chroot(root: Path, img: Image, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run argv in the unpacked image as its configured user, with its environment only."""
    if os.geteuid() != 0:
        pytest.fail("running the image needs root (chroot); CI runs the tests as root")
    c = img.config()["config"]
    env = dict(e.split("=", 1) for e in c["Env"])
    chroot_bin = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run(
        [chroot_bin, f"--userspec={c['User']}", str(root), *argv],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def hami_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Path]:
    img = load(IMAGES / HAMI[0])
    return img, unpack(img, tmp_path_factory.mktemp("hami") / "rootfs")


def test_hami_version(hami_root: tuple[Image, Path]) -> None:
    img, root = hami_root
    done = chroot(root, img, *img.config()["config"]["Entrypoint"], "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"hami {version()}"


def test_runtime_imports_succeed(hami_root: tuple[Image, Path]) -> None:
    img, root = hami_root
    modules = "grpc, aiohttp, cryptography, pydantic_core, pydantic, orjson, yaml, pynvml, prometheus_client, jinja2"
    modules += ", google.protobuf, ssl, hashlib, ctypes, decimal, bz2, lzma, uuid, zlib, pyexpat"
    code = f"import {modules}; from cryptography.hazmat.primitives.asymmetric import ec; print('ok')"
    done = chroot(root, img, "python3", "-c", code)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_simulate_in_the_image_matches_the_host(hami_root: tuple[Image, Path]) -> None:
    img, root = hami_root
    shutil.copytree(REPO / "examples", root / "tmp" / "examples")
    args = ["simulate", "--output", "json", "--now", "1790000000"]
    args += ["--nodes", "{d}/nodes.yaml", "--pods", "{d}/pods.yaml", "--config", "{d}/device-config.yaml"]
    inside = chroot(root, img, "hami", *(a.format(d="/tmp/examples") for a in args))
    assert inside.returncode == 0, inside.stderr
    host = subprocess.run(
        [str(Path(sys.executable).parent / "hami"), *(a.format(d=REPO / "examples") for a in args)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(inside.stdout) == json.loads(host.stdout)
    assert json.loads(inside.stdout)  # placements were made


def test_webui_pages_render_in_the_image(hami_root: tuple[Image, Path]) -> None:
    """The web UI's templates and static files are in the image (package data) and render there."""
    img, root = hami_root
    code = (
        "from hami.testing import webuiseed as w\n"
        "from hami.webui.server import PAGES, Query, Renderer, STATIC_TYPES, _static\n"
        "from hami.webui.usage import LiveUsage\n"
        "from hami.webui.views import Snapshot\n"
        "nodes, pods = w.cluster(3, 2)\n"
        "snap = Snapshot(w.ledger(nodes, pods).scheduler, pods, nodes, LiveUsage(), w.SCHEDULER)\n"
        "r = Renderer()\n"
        "print(*(p.name for p in PAGES if '<h1>' + p.title + '</h1>' in r.render(p, snap, Query())))\n"
        "print(*(n for n in STATIC_TYPES if _static(n)))\n"
    )
    done = chroot(root, img, "python3", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        "overview nodes cards workloads namespaces",
        "webui.js webui.css favicon.svg",
    ]


def test_install_host_in_the_image(hami_root: tuple[Image, Path]) -> None:
    img, root = hami_root
    (root / "tmp" / "hook").mkdir()
    os.chown(root / "tmp" / "hook", NONROOT, NONROOT)
    done = chroot(root, img, "hami", "install-host", "--hook-path", "/tmp/hook")
    assert done.returncode == 0, done.stderr
    vgpu = root / "tmp" / "hook" / "vgpu"
    assert (vgpu / "libvgpu.so").read_bytes() == (root / "opt/hami/lib/libvgpu.so").read_bytes()
    assert (vgpu / "ld.so.preload").read_text() == "/tmp/hook/vgpu/libvgpu.so\n"
    assert (vgpu / "libvgpu.so").stat().st_uid == NONROOT
    again = chroot(root, img, "hami", "install-host", "--hook-path", "/tmp/hook")
    assert again.stdout.count("unchanged") == 2, again.stdout


def test_libvgpu_exports_its_hooks(hami_root: tuple[Image, Path]) -> None:
    _, root = hami_root
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(root / "opt/hami/lib/libvgpu.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"cuInit", "cuMemAlloc_v2", "nvmlDeviceGetMemoryInfo", "dlsym"} <= set(symbols)


def test_every_python_source_has_its_bytecode(hami_root: tuple[Image, Path]) -> None:
    _, root = hami_root
    missing = [
        str(py.relative_to(root))
        for top in ("usr/lib/python3.11", "opt/hami/lib/python3.11/site-packages")
        for py in (root / top).rglob("*.py")
        if not (py.parent / "__pycache__" / f"{py.stem}.cpython-311.pyc").is_file()
    ]
    assert missing == []


def test_hami_image_is_under_the_size_limit(hami_root: tuple[Image, Path]) -> None:
    _, root = hami_root
    total = sum(
        p.lstat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.relative_to(root).parts[0] != "tmp"
    )
    assert total < HAMI_SIZE_LIMIT, f"hami image unpacks to {total / 1e6:.1f} MB"


def test_kube_scheduler_runs(tmp_path: Path) -> None:
    img = load(IMAGES / SCHEDULER[0])
    root = unpack(img, tmp_path / "rootfs")
    done = chroot(root, img, *img.config()["config"]["Entrypoint"], "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Kubernetes {K8S_VERSION}"
    assert (root / "etc" / "passwd").read_text().count(f":{NONROOT}:{NONROOT}:") == 1


# --- reproducible ------------------------------------------------------------------------------


def test_a_second_build_gives_the_same_bytes(tmp_path: Path) -> None:
    k8s_bin = (
        os.environ.get("HAMI_K8S_BIN")
        or subprocess.run(
            [str(REPO / "hack" / "build-k8s.sh")], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    done = subprocess.run(
        [sys.executable, "-m", "ocibuild", "--out", str(tmp_path), "--k8s-bin", k8s_bin, "--force"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO / "images")),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for name in (HAMI[0], SCHEDULER[0]):
        rebuilt, original = tmp_path / name, IMAGES / name
        same = rebuilt.read_bytes() == original.read_bytes()
        assert same, f"{name}: a rebuild differs (or dist/images is stale: run `make images`)"
