"""Pieces every image's root file system shares: users, /tmp, merged-/usr links, link checks.

Images run as `nonroot` (uid/gid 65532, home /home/nonroot owned by it); `root` exists for tools that
look uid 0 up. /tmp is world-writable with the sticky bit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

NONROOT_UID = 65532
NONROOT_HOME = "home/nonroot"
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/{NONROOT_HOME}:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n"
#: owners that differ from 0:0, for layer.write_layer
OWNERS = {NONROOT_HOME: (NONROOT_UID, NONROOT_UID)}


class RootfsError(Exception):
    """The assembled tree is not a valid root file system; the message names the path."""


def staging(work: Path, name: str) -> tuple[Path, Path]:
    """Fresh ``work/<name>`` (the layer tree) and ``work/blobs`` directories for one image build."""
    tree, blobs = work / name, work / "blobs"
    tree.mkdir(parents=True)
    blobs.mkdir(parents=True)
    return tree, blobs


def compile_static(source: Path, binary: Path) -> None:
    """Compile one C file into a stripped static executable (mode 0755); RootfsError with the
    compiler's output when it does not compile."""
    cc = subprocess.run(
        ["gcc", "-static", "-O2", "-s", "-Wall", "-Werror", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if cc.returncode != 0:
        raise RootfsError(f"gcc {source}: {cc.stderr.strip()}")
    binary.chmod(0o755)


def make_dirs(root: Path, *paths: str, mode: int = 0o755) -> None:
    """Create directories under `root` with an exact mode (no umask), parents 0755."""
    for rel in paths:
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        for parent in list(path.relative_to(root).parents)[:-1]:
            (root / parent).chmod(0o755)
        path.chmod(mode)


def write_file(root: Path, rel: str, data: str | bytes, mode: int = 0o644) -> Path:
    """Write `data` at `root/rel` (parents 0755) with exactly `mode`."""
    path = root / rel
    make_dirs(root, str(path.parent.relative_to(root)))
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def base_files(root: Path) -> None:
    """/etc/passwd, /etc/group, /tmp (1777) and the non-root user's home."""
    write_file(root, "etc/passwd", PASSWD)
    write_file(root, "etc/group", GROUP)
    make_dirs(root, "tmp", mode=0o1777)
    make_dirs(root, NONROOT_HOME, mode=0o700)


def merged_usr_links(root: Path) -> None:
    """bookworm's merged /usr: /bin, /sbin, /lib, /lib64 link into /usr (where /usr has that directory)."""
    for name in ("bin", "sbin", "lib", "lib64"):
        if (root / "usr" / name).is_dir():
            os.symlink(f"usr/{name}", root / name)


def check_links(layers: Sequence[Path]) -> None:
    """Every symlink in the stacked `layers` resolves to an existing path, `/` being the image root."""
    for root in layers:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    rel = PurePosixPath(path.relative_to(root).as_posix())
                    if _resolve(layers, rel, 0) is None:
                        raise RootfsError(f"/{rel}: dangling symlink to {os.readlink(path)!r}")


def _entry(layers: Sequence[Path], rel: PurePosixPath) -> Path | None:
    """The topmost layer's file at `rel`, if any layer has one."""
    for root in reversed(layers):
        path = root / rel
        if path.is_symlink() or path.exists():
            return path
    return None


def _resolve(layers: Sequence[Path], link: PurePosixPath, depth: int) -> PurePosixPath | None:
    """Resolve the symlink at `link` across the layers; None when it dangles or loops."""
    entry = _entry(layers, link)
    if entry is None or depth > 40:
        return None
    target = os.readlink(entry)
    current = PurePosixPath("") if target.startswith("/") else link.parent
    for part in PurePosixPath(target.lstrip("/")).parts:
        if part == "..":
            current = current.parent
            continue
        current = current / part
        found = _entry(layers, current)
        if found is None:
            return None
        if found.is_symlink():
            resolved = _resolve(layers, current, depth + 1)
            if resolved is None:
                return None
            current = resolved
    return current


def tree_size(root: Path) -> int:
    """Bytes of regular files under `root` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen and not os.path.islink(os.path.join(dirpath, name)):
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
