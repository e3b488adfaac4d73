"""The `hami` image: Debian bookworm's Python 3.11, the locked wheels, hami and libvgpu.so.

Three layers, from the least to the most often changed:
1. `debian`: the packages of images/debian.lock (Python 3.11 and the C libraries it and the wheels
   load), pruned of documentation, locales, iconv modules, tools and the stdlib parts whose C
   libraries are not installed; plus users, /tmp and merged-/usr links;
2. `python-deps`: /opt/hami as a virtual environment with uv.lock's runtime packages;
3. `hami`: the hami package, the `hami` command and /opt/hami/lib/libvgpu.so.
Python sources are byte-compiled by the image's own interpreter with unchecked-hash pycs (no
timestamps, nothing written at run time by a non-root user).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ocibuild import debs, layer, oci, python_env, rootfs

LIBVGPU = "opt/hami/lib/libvgpu.so"
STDLIB = "usr/lib/python3.11"
#: Debian paths no hami process reads: docs, locales, iconv modules, OpenSSL engines, tools
DROP_PREFIXES = (
    "usr/share/",
    "usr/libexec/",
    "usr/sbin/",
    "usr/lib/x86_64-linux-gnu/gconv/",
    "usr/lib/x86_64-linux-gnu/engines-3/",
    "usr/lib/x86_64-linux-gnu/ossl-modules/",
    "usr/lib/x86_64-linux-gnu/audit/",
)
#: stdlib packages for a terminal, a GUI, tests or packaging, and those whose C library is absent
DROP_STDLIB = (
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "lib2to3",
    "ensurepip",
    "venv",
    "distutils",
    "pydoc_data",
    "test",
    "unittest/test",
    "sqlite3",
    "curses",
    "dbm",
    "__phello__",
    "config-3.11-x86_64-linux-gnu",
)
#: extension modules for tests or for libraries left out (sqlite, ncurses, readline, Berkeley DB, NIS, crypt)
DROP_DYNLOAD = (
    "_test",
    "_ctypes_test",
    "_xxtestfuzz",
    "_xxsubinterpreters",
    "xxlimited",
    "_sqlite3",
    "_curses",
    "readline",
    "_dbm",
    "nis",
    "_crypt",
    "ossaudiodev",
)
ENV = (
    "PATH=/opt/hami/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
)


@dataclass(frozen=True)
class HamiInputs:
    """Everything the hami image is built from."""

    repo: Path
    uv: Path
    deb_cache: Path
    libvgpu: Path
    version: str
    epoch: int
    labels: dict[str, str]


def dropped(path: str) -> bool:
    """True for a Debian path the image leaves out (see DROP_PREFIXES, DROP_STDLIB, DROP_DYNLOAD)."""
    if path.startswith("usr/bin/"):
        return path != "usr/bin/python3.11"
    if any(path.startswith(p) for p in DROP_PREFIXES):
        return True
    if path.startswith(f"{STDLIB}/lib-dynload/"):
        return path.rsplit("/", 1)[1].startswith(DROP_DYNLOAD)
    if path.startswith(f"{STDLIB}/"):
        rel = path[len(STDLIB) + 1 :]
        return any(rel == d or rel.startswith(f"{d}/") for d in DROP_STDLIB)
    return False


def build(inputs: HamiInputs, work: Path, out: Path) -> oci.Archive:
    """Assemble the three layer trees under `work` and write the image archive to `out`."""
    base, deps, app, blobs = (work / n for n in ("debian", "python-deps", "hami", "blobs"))
    for d in (base, deps, app, blobs):
        d.mkdir(parents=True)
    locked = debs.read_lock(inputs.repo / "images" / "debian.lock")
    for deb in locked:
        debs.unpack(debs.fetch(deb, inputs.deb_cache), base, dropped)
    rootfs.merged_usr_links(base)
    rootfs.base_files(base)
    python = next(d for d in locked if d.name == "python3.11-minimal")
    python_env.venv_skeleton(deps, python.upstream_version)
    python_env.install_locked(inputs.uv, inputs.repo, deps, work)
    python_env.install_project(inputs.uv, inputs.repo, app, work)
    lib = app / LIBVGPU
    shutil.copyfile(inputs.libvgpu, lib)
    # debug sections carry the build directory; the dynamic symbols the hooks need stay
    subprocess.run(["strip", "--strip-debug", str(lib)], check=True)
    lib.chmod(0o755)
    compile_python(base, [base / STDLIB, deps / python_env.SITE, app / python_env.SITE])
    trees = [base, deps, app]
    rootfs.check_links(trees)
    layers = [
        oci.LayerSpec(
            layer.write_layer(tree, blobs / f"{tree.name}.tar.gz", mtime=inputs.epoch, owners=rootfs.OWNERS),
            f"ocibuild: {tree.name}",
        )
        for tree in trees
    ]
    spec = oci.ImageSpec(
        repository="hami.local/hami",
        tag=inputs.version,
        layers=layers,
        entrypoint=["hami"],
        user=f"{rootfs.NONROOT_UID}:{rootfs.NONROOT_UID}",
        env=ENV,
        created=inputs.epoch,
        labels=inputs.labels,
    )
    return oci.write_archive(spec, out)


def compile_python(base: Path, dirs: list[Path]) -> None:
    """Byte-compile `dirs` with the image's own interpreter (run through its own loader, no chroot).

    Each pyc records its path inside the image and uses unchecked-hash validation, so the bytes do
    not depend on file times and a read-only /opt/hami never needs a rewrite.
    """
    libdir = base / "usr/lib/x86_64-linux-gnu"
    loader = libdir / "ld-linux-x86-64.so.2"
    # no pycs from the compiler's own imports (timestamp-based, written before compileall sees them)
    env = {
        "PYTHONHOME": str(base / "usr"),
        "PYTHONHASHSEED": "0",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for directory in dirs:
        inside = "/" + directory.relative_to(_layer_root(directory)).as_posix()
        cmd = [str(loader), "--library-path", str(libdir), str(base / "usr/bin/python3.11")]
        cmd += ["-I", "-m", "compileall", "-q", "-f", "-j", "1", "--invalidation-mode", "unchecked-hash"]
        cmd += ["-s", str(directory), "-p", inside, str(directory)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise rootfs.RootfsError(f"compileall {inside}: {done.stdout[-1500:]}{done.stderr[-1500:]}")


def _layer_root(path: Path) -> Path:
    """The layer tree a staged path belongs to (the parent of its `usr` or `opt` component)."""
    parts = path.parts
    for i, part in enumerate(parts):
        if part in ("usr", "opt"):
            return Path(*parts[:i])
    raise ValueError(f"{path}: not inside a layer tree")
