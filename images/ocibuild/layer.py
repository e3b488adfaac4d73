"""Deterministic image layers: a directory tree packed as a sorted, normalised, gzipped tar.

Guarantees: the bytes of a layer depend only on the paths, file types, permission bits, contents
and link targets under the directory, plus the `mtime` given (SOURCE_DATE_EPOCH). Entries are
sorted by path, every entry has that mtime, owner 0:0 (or the owner named in `owners`) and no user
or group names; the tar is GNU format (long names without PAX time records); gzip has mtime 0 and
no file name. Files linked together (same inode) become hard-link entries to the first path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast

GZIP_LEVEL = 6


class LayerError(Exception):
    """The tree holds something a layer cannot carry (a device, a socket, a fifo)."""


@dataclass(frozen=True)
class Layer:
    """A written layer blob: gzip digest and size (the blob), tar digest and size (the diff)."""

    path: Path
    digest: str
    size: int
    diff_id: str
    uncompressed_size: int


class Sink(Protocol):
    """Where bytes are written: a file, a gzip stream, a hashing writer."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class _HashingWriter:
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        self.count += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()


def walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every path under `root` (relative, `/`-separated), depth first, each directory sorted by name.

    That is the order of the paths' component lists: a directory comes right before its contents.
    """
    with os.scandir(root / rel if rel else root) as it:
        names = sorted(e.name for e in it)
    for name in names:
        child = f"{rel}/{name}" if rel else name
        st = os.lstat(root / child)
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk(root, child)


def _entries(root: Path, mtime: int, owners: Mapping[str, tuple[int, int]]) -> Iterator[tarfile.TarInfo]:
    seen: dict[tuple[int, int], str] = {}
    for rel, st in walk(root):
        info = tarfile.TarInfo(rel)
        info.mtime = mtime
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = owners.get(rel, (0, 0))
        info.uname = info.gname = ""
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(root / rel)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                info.type = tarfile.LNKTYPE
                info.linkname = seen[key]
            else:
                seen[key] = rel
                info.type = tarfile.REGTYPE
                info.size = st.st_size
        else:
            raise LayerError(f"{root / rel}: not a file, directory or symlink; a layer cannot carry it")
        yield info


def tar_tree(
    root: Path, out: Sink, *, mtime: int, owners: Mapping[str, tuple[int, int]] | None = None
) -> None:
    """Write the deterministic (uncompressed) tar of `root` to `out`."""
    # stream mode ("w|") only ever writes to the file object; typeshed wants a whole file
    with tarfile.open(fileobj=cast("IO[bytes]", out), mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for info in _entries(root, mtime, owners or {}):
            if info.type == tarfile.REGTYPE:
                with (root / info.name).open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def write_layer(
    root: Path, out: Path, *, mtime: int, owners: Mapping[str, tuple[int, int]] | None = None
) -> Layer:
    """Pack `root` into the gzipped layer file `out` and return its digests and sizes."""
    with out.open("wb") as raw:
        blob = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=GZIP_LEVEL) as gz:
            diff = _HashingWriter(gz)
            tar_tree(root, diff, mtime=mtime, owners=owners)
    return Layer(
        path=out,
        digest=f"sha256:{blob.sha.hexdigest()}",
        size=blob.count,
        diff_id=f"sha256:{diff.sha.hexdigest()}",
        uncompressed_size=diff.count,
    )
