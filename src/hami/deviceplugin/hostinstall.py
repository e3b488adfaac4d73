"""Put libvgpu.so and its preload file on the node, where the device plugin mounts them from.

In hami-core mode the device plugin's Allocate gives every GPU container two read-only bind mounts
from the node's `<hook>/vgpu` directory (`HOOK_PATH`, default `/usr/local`):

    <hook>/vgpu/libvgpu.so    -> <hook>/vgpu/libvgpu.so   (same path inside the container)
    <hook>/vgpu/ld.so.preload -> /etc/ld.so.preload       (dropped only for allowed opt-outs)

so the preload file names the library by its path inside the container, `<hook>/vgpu/libvgpu.so`.
`install_host` writes both files there; the device plugin DaemonSet runs it (`hami install-host`)
in an init container that mounts the node's `<hook>/vgpu` at the same path.

Guarantees:
- atomic: each file is written to a temporary file in the same directory, flushed to disk and
  renamed over the old one, so a container starting at any moment bind-mounts either the old or
  the new complete file (a running container keeps the inode it mounted);
- idempotent: a file whose bytes are already the wanted ones is not rewritten (same inode, same
  mtime); only a wrong mode is corrected in place;
- modes: 0755 for the library, 0644 for the preload file, 0755 for a `vgpu` directory it creates;
- errors: `HostInstallError` naming the path and the reason; a failed write leaves no temporary file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

LIBRARY_NAME = "libvgpu.so"
PRELOAD_NAME = "ld.so.preload"
DEFAULT_HOOK_PATH = "/usr/local"
DEFAULT_LIBRARY = "/opt/hami/lib/libvgpu.so"
LIBRARY_MODE = 0o755
PRELOAD_MODE = 0o644
_CHUNK = 1 << 20


class HostInstallError(OSError):
    """The host files could not be installed; the message names the path and the reason."""


def vgpu_dir(hook_path: str) -> str:
    """`<hook>/vgpu`: the node directory holding libvgpu.so, ld.so.preload and container caches."""
    return f"{hook_path.rstrip('/')}/vgpu"


def preload_contents(hook_path: str) -> bytes:
    """The ld.so.preload the device plugin mounts: the library's path inside GPU containers."""
    return f"{vgpu_dir(hook_path)}/{LIBRARY_NAME}\n".encode()


@dataclass(frozen=True)
class InstallResult:
    """What `install_host` did: the two paths and whether each one's content was (re)written."""

    library: Path
    preload: Path
    library_written: bool
    preload_written: bool


def install_host(hook_path: str, library: str | Path) -> InstallResult:
    """Install `library` as `<hook>/vgpu/libvgpu.so` and write `<hook>/vgpu/ld.so.preload`."""
    if not hook_path.startswith("/"):
        raise HostInstallError(f"--hook-path: must be an absolute path, got {hook_path!r}")
    source = Path(library)
    _check_library(source)
    target_dir = Path(vgpu_dir(hook_path))
    try:
        target_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise HostInstallError(f"{target_dir}: cannot create directory: {exc.strerror}") from exc
    if not target_dir.is_dir():
        raise HostInstallError(f"{target_dir}: exists and is not a directory")
    lib_path = target_dir / LIBRARY_NAME
    preload_path = target_dir / PRELOAD_NAME
    lib_written = _install_file(lib_path, source.read_bytes(), LIBRARY_MODE)
    preload_written = _install_file(preload_path, preload_contents(hook_path), PRELOAD_MODE)
    return InstallResult(lib_path, preload_path, lib_written, preload_written)


def _check_library(source: Path) -> None:
    try:
        with source.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise HostInstallError(f"--library {source}: no such file") from None
    except IsADirectoryError:
        raise HostInstallError(f"--library {source}: is a directory, expected libvgpu.so") from None
    except OSError as exc:
        raise HostInstallError(f"--library {source}: cannot read: {exc.strerror}") from exc
    if magic != b"\x7fELF":
        raise HostInstallError(f"--library {source}: not an ELF shared library")


def _install_file(path: Path, data: bytes, mode: int) -> bool:
    """Make `path` hold `data` with `mode`; True when the content had to be written."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise HostInstallError(f"{path}: cannot inspect: {exc.strerror}") from exc
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(data) and _same_bytes(path, data):
        if stat.S_IMODE(st.st_mode) != mode:
            try:
                path.chmod(mode)
            except OSError as exc:
                raise HostInstallError(f"{path}: cannot set mode {mode:o}: {exc.strerror}") from exc
        return False
    write_atomically(path, data, mode)
    return True


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        with path.open("rb") as f:
            for offset in range(0, len(data), _CHUNK):
                if f.read(_CHUNK) != data[offset : offset + _CHUNK]:
                    return False
            return f.read(1) == b""
    except OSError as exc:
        raise HostInstallError(f"{path}: cannot read: {exc.strerror}") from exc


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` (file mode `mode`) so that a reader sees the old or the new file,
    never a partial one: a hidden temporary sibling, fsynced, renamed over `path`, then the directory
    fsynced. HostInstallError names the path and the reason."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise HostInstallError(f"{path.parent}: cannot write: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise HostInstallError(f"{path}: cannot write: {exc.strerror}") from exc
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
