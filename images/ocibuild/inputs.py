"""Input fingerprints, so that a rebuild with unchanged inputs is skipped (a warm `make images`).

A fingerprint is the SHA-256 over the given values and over every input file's path and contents;
it is stored beside the archive as `.<archive>.inputs`. The archive is rebuilt whenever the stored
fingerprint is missing or differs, or the archive itself is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path


def tree_files(root: Path) -> list[Path]:
    """Every file under `root`, bytecode caches left out."""
    return [p for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


def fingerprint(files: Iterable[Path], values: Mapping[str, str]) -> str:
    """SHA-256 over `values` and the paths and contents of `files` (order does not matter)."""
    h = hashlib.sha256()
    for key in sorted(values):
        h.update(f"{key}={values[key]}\0".encode())
    for path in sorted({p.resolve() for p in files}):
        h.update(f"{path}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _stamp(archive: Path) -> Path:
    return archive.with_name(f".{archive.name}.inputs")


def up_to_date(archive: Path, key: str) -> bool:
    """True when `archive` exists and was built from inputs with fingerprint `key`."""
    stamp = _stamp(archive)
    return archive.is_file() and stamp.is_file() and stamp.read_text().strip() == key


def record(archive: Path, key: str) -> None:
    """Remember that `archive` was built from inputs with fingerprint `key`."""
    _stamp(archive).write_text(key + "\n")
