"""`python -m ocibuild`: build hami's image archives into an output directory (see docs/images.md).

    PYTHONPATH=images python -m ocibuild --out dist/images --k8s-bin "$(hack/build-k8s.sh)"
    PYTHONPATH=images python -m ocibuild --update-lock     # re-pin images/debian.lock from apt's index

Exit status 0 with one summary line per image; 2 with `error: ...` naming what was wrong.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ocibuild import (
    debs,
    hami_image,
    inputs,
    layer,
    oci,
    pause_image,
    python_env,
    rootfs,
    scheduler_image,
    standin_image,
)

IMAGES = ("hami", "kube-scheduler", "pause", "ubuntu-standin")
#: repository files the hami image is built from, besides src/ and libvgpu.so
HAMI_INPUT_FILES = (
    "pyproject.toml",
    "uv.lock",
    "README.md",
    "images/debian.lock",
    "images/build-constraints.txt",
)
#: the Debian packages of the hami image: Python 3.11 and the shared libraries it and the wheels load
DEBIAN_PACKAGES = (
    "libc6",  # every binary
    "libgcc-s1",  # unwinding in grpcio, pydantic-core, cryptography, libstdc++
    "libstdc++6",  # grpcio, protobuf's upb, frozenlist
    "zlib1g",  # python3.11 itself, zlib/gzip
    "libexpat1",  # python3.11 itself, pyexpat
    "libffi8",  # ctypes (nvidia-ml-py loads NVML through it)
    "libssl3",  # ssl and hashlib (the kube client, webhook TLS)
    "libbz2-1.0",  # bz2 (imported by shutil/tarfile when present)
    "liblzma5",  # lzma (same)
    "libuuid1",  # uuid's C accelerator
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
)


#: the Debian package of the sandbox's ubuntu stand-in (images/ocibuild/standin_image.py)
STANDIN_PACKAGES = ("busybox-static",)


class BuildError(Exception):
    """A build input is missing or wrong; the message names it."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    repo = Path(args.repo).resolve()
    # wheels come from the same cache `make venv` fills, also when run outside make
    os.environ.setdefault("UV_CACHE_DIR", str(Path(args.cache) / "uv"))
    try:
        if args.update_lock:
            for name, packages, header in (
                ("debian.lock", DEBIAN_PACKAGES, _LOCK_HEADER),
                ("standin.lock", STANDIN_PACKAGES, _STANDIN_LOCK_HEADER),
            ):
                lock = repo / "images" / name
                debs.write_lock(lock, debs.resolve(packages), header)
                print(f"wrote {lock}")
            return 0
        for line in build(args, repo):
            print(line)
    except (
        BuildError,
        debs.DebError,
        layer.LayerError,
        python_env.PythonEnvError,
        rootfs.RootfsError,
        standin_image.StandinBuildError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


_LOCK_HEADER = """Debian bookworm packages of the hami image: name, exact version, SHA-256 of the .deb.
Written by `PYTHONPATH=images python -m ocibuild --update-lock` (apt's current candidates); the
build fetches exactly these (apt-get download) and refuses a .deb with another hash."""


_STANDIN_LOCK_HEADER = """Debian bookworm package of the sandbox's ubuntu stand-in image: name, exact version, SHA-256.
Written by `PYTHONPATH=images python -m ocibuild --update-lock`, like images/debian.lock."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ocibuild", description=__doc__.split("\n", 1)[0])
    p.add_argument("--repo", default=".", help="repository root (default: .)")
    p.add_argument("--out", default="dist/images", help="output directory (default: dist/images)")
    p.add_argument("--image", action="append", choices=IMAGES, help="build only this image (repeatable)")
    p.add_argument("--k8s-bin", help="directory holding kube-scheduler (hack/build-k8s.sh prints it)")
    p.add_argument("--libvgpu", default="native/build/libvgpu.so", help="libvgpu.so (make -C native)")
    p.add_argument(
        "--cache", default=str(Path.home() / ".cache/hami"), help="cache root (default ~/.cache/hami)"
    )
    p.add_argument(
        "--uv", help="uv binary (default <cache>/uv-<version>/bin/uv from hack/uv-requirements.txt)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    p.add_argument(
        "--update-lock",
        action="store_true",
        help="re-pin images/debian.lock and images/standin.lock and exit",
    )
    return p


@dataclass(frozen=True)
class Plan:
    """One image to build: where it goes, what it is built from, and how."""

    archive: Path
    files: list[Path]
    values: dict[str, str]
    run: Callable[[Path], oci.Archive]


def build(args: argparse.Namespace, repo: Path) -> list[str]:
    """Build the requested images whose inputs changed; return one summary line per image."""
    out = (repo / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)
    epoch = source_date_epoch(repo)
    builder = inputs.tree_files(Path(__file__).parent)
    summaries = []
    for image in args.image or IMAGES:
        started = time.monotonic()
        if image == "hami":
            plan = _hami_plan(args, repo, cache, epoch, out)
        elif image == "kube-scheduler":
            plan = _scheduler_plan(args, repo, epoch, out)
        elif image == "pause":
            plan = _pause_plan(repo, epoch, out)
        else:
            plan = _standin_plan(repo, cache, epoch, out)
        key = inputs.fingerprint([*builder, *plan.files], plan.values)
        if not args.force and inputs.up_to_date(plan.archive, key):
            summaries.append(f"{plan.archive}: up to date (inputs unchanged)")
            continue
        with tempfile.TemporaryDirectory(prefix=f"ocibuild-{image}-") as tmp:
            archive = plan.run(Path(tmp))
        inputs.record(archive.path, key)
        size = sum(blob.uncompressed_size for blob in archive.layers)
        summaries.append(
            f"{archive.path}: {archive.manifest_digest} "
            f"({size / 1e6:.1f} MB unpacked, {archive.path.stat().st_size / 1e6:.1f} MB archive, "
            f"{time.monotonic() - started:.0f} s)"
        )
    return summaries


def _hami_plan(args: argparse.Namespace, repo: Path, cache: Path, epoch: int, out: Path) -> Plan:
    version = project_version(repo)
    libvgpu = repo / args.libvgpu
    if not libvgpu.is_file():
        raise BuildError(f"--libvgpu {libvgpu}: no such file (run make -C native)")
    uv = Path(args.uv) if args.uv else _default_uv(repo, cache)
    if not uv.is_file():
        raise BuildError(f"--uv {uv}: no such file (run hack/ensure-uv.sh)")
    hami_inputs = hami_image.HamiInputs(
        repo=repo,
        uv=uv,
        deb_cache=cache / "debs",
        libvgpu=libvgpu,
        version=version,
        epoch=epoch,
        labels=labels(repo, version, "hami: HAMi-compatible GPU sharing for Kubernetes"),
    )
    archive = out / f"hami-{version}.tar"
    files = [libvgpu, *inputs.tree_files(repo / "src"), *(repo / n for n in HAMI_INPUT_FILES)]
    values = {"epoch": str(epoch), **hami_inputs.labels}
    return Plan(archive, files, values, lambda work: hami_image.build(hami_inputs, work, archive))


def _scheduler_plan(args: argparse.Namespace, repo: Path, epoch: int, out: Path) -> Plan:
    if not args.k8s_bin:
        raise BuildError("--k8s-bin: required for the kube-scheduler image (hack/build-k8s.sh prints it)")
    binary = Path(args.k8s_bin) / "kube-scheduler"
    if not binary.is_file():
        raise BuildError(f"--k8s-bin {args.k8s_bin}: no kube-scheduler there")
    reported = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False).stdout
    if not reported.startswith("Kubernetes v"):
        raise BuildError(f"{binary} --version: expected 'Kubernetes v...', got {reported.strip()!r}")
    version = reported.split()[1]
    sched_inputs = scheduler_image.SchedulerInputs(
        binary=binary,
        version=version,
        epoch=epoch,
        labels=labels(repo, version, "kube-scheduler for hami's scheduler extender"),
    )
    archive = out / f"kube-scheduler-{version}.tar"
    values = {"epoch": str(epoch), **sched_inputs.labels}
    return Plan(archive, [binary], values, lambda work: scheduler_image.build(sched_inputs, work, archive))


def _pause_plan(repo: Path, epoch: int, out: Path) -> Plan:
    pause_inputs = pause_image.PauseInputs(
        source=repo / "images" / "sandbox" / "pause.c",
        epoch=epoch,
        labels=labels(repo, pause_image.TAG, "pod sandbox for hami's local cluster"),
    )
    archive = out / f"pause-{pause_image.TAG}.tar"
    values = {"epoch": str(epoch), **pause_inputs.labels}
    return Plan(
        archive, [pause_inputs.source], values, lambda work: pause_image.build(pause_inputs, work, archive)
    )


def _standin_plan(repo: Path, cache: Path, epoch: int, out: Path) -> Plan:
    standin_inputs = standin_image.StandinInputs(
        lock=repo / "images" / "standin.lock",
        bash_source=repo / "images" / "sandbox" / "bash.c",
        deb_cache=cache / "debs",
        epoch=epoch,
        labels=labels(repo, standin_image.TAG, "busybox standing in for ubuntu in hami's local cluster"),
    )
    archive = out / f"ubuntu-standin-{standin_image.TAG}.tar"
    values = {"epoch": str(epoch), **standin_inputs.labels}
    files = [standin_inputs.lock, standin_inputs.bash_source]
    return Plan(archive, files, values, lambda work: standin_image.build(standin_inputs, work, archive))


def project_version(repo: Path) -> str:
    """`[project].version` of pyproject.toml."""
    with (repo / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f).get("project", {}).get("version")
    if not isinstance(version, str):
        raise BuildError(f"{repo / 'pyproject.toml'}: [project].version missing")
    return version


def _git(repo: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def source_date_epoch(repo: Path) -> int:
    """SOURCE_DATE_EPOCH from the environment, else the last commit's time, else 0."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        if not env.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH: expected whole seconds, got {env!r}")
        return int(env)
    commit_time = _git(repo, "log", "-1", "--format=%ct")
    return int(commit_time) if commit_time else 0


def labels(repo: Path, version: str, title: str) -> dict[str, str]:
    """OCI labels: title, version, and where known the commit (suffixed -dirty) and the source URL."""
    result = {"org.opencontainers.image.title": title, "org.opencontainers.image.version": version}
    revision = _git(repo, "rev-parse", "HEAD")
    if revision:
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
        result["org.opencontainers.image.revision"] = revision + ("-dirty" if dirty else "")
    source = _git(repo, "remote", "get-url", "origin")
    if source:
        result["org.opencontainers.image.source"] = source
    return result


def _default_uv(repo: Path, cache: Path) -> Path:
    for line in (repo / "hack" / "uv-requirements.txt").read_text().splitlines():
        if line.startswith("uv=="):
            return cache / f"uv-{line.split('==', 1)[1].split()[0]}" / "bin" / "uv"
    raise BuildError(f"{repo / 'hack/uv-requirements.txt'}: no uv== line")


if __name__ == "__main__":
    sys.exit(main())
