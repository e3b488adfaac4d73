"""Debian packages pinned by version and SHA-256, fetched with apt, unpacked into a merged-/usr rootfs.

The lock file (`images/debian.lock`) has one `name version sha256` line per package. `fetch` keeps
each package in a content-addressed cache (`<cache>/<sha256>.deb`) and only asks apt for one that
is missing there; a download whose hash differs from the lock is refused. `unpack` extracts a
package's data the way bookworm lays it out on a merged-/usr system (`/lib/...` lands in
`/usr/lib/...`; `rootfs.merged_usr_links` adds the top-level links), skipping what `exclude`
rejects.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MERGED_DIRS = ("bin", "sbin", "lib", "lib64")
_LINE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+) (?P<version>\S+) (?P<sha256>[0-9a-f]{64})$")


class DebError(Exception):
    """A package could not be pinned, fetched or unpacked; the message names it and the reason."""


@dataclass(frozen=True)
class LockedDeb:
    """One pinned package: its name, exact version and the SHA-256 of its .deb."""

    name: str
    version: str
    sha256: str

    @property
    def upstream_version(self) -> str:
        """The version without epoch and Debian revision (`1:1.2.13.dfsg-1+deb12u1` -> `1.2.13.dfsg`)."""
        return self.version.split(":", 1)[-1].rsplit("-", 1)[0]


def read_lock(path: Path) -> list[LockedDeb]:
    """Parse the lock file; a malformed line raises DebError naming `file:line`."""
    debs: list[LockedDeb] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise DebError(f"{path}:{number}: expected 'name version sha256', got {raw!r}")
        debs.append(LockedDeb(match["name"], match["version"], match["sha256"]))
    if not debs:
        raise DebError(f"{path}: no packages")
    return debs


def resolve(names: Iterable[str]) -> list[LockedDeb]:
    """Pin each package to the candidate version apt's index offers now (for `--update-lock`)."""
    pinned = []
    for name in names:
        out = _run(["apt-cache", "show", "--no-all-versions", name], f"apt-cache show {name}")
        fields = dict(
            line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "Version" not in fields or "SHA256" not in fields:
            raise DebError(f"{name}: apt-cache show gave no Version/SHA256 (run apt-get update?)")
        pinned.append(LockedDeb(name, fields["Version"], fields["SHA256"]))
    return pinned


def write_lock(path: Path, debs: Iterable[LockedDeb], header: str) -> None:
    """Write the lock file: the header comment, then packages sorted by name."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]
    lines += [f"{d.name} {d.version} {d.sha256}" for d in sorted(debs, key=lambda d: d.name)]
    path.write_text("\n".join(lines) + "\n")


def fetch(deb: LockedDeb, cache: Path) -> Path:
    """The cached .deb of `deb`, downloaded with `apt-get download` when missing; hash-checked."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{deb.sha256}.deb"
    if path.is_file() and _sha256(path) == deb.sha256:
        return path
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        spec = f"{deb.name}={deb.version}"
        try:
            _run(["apt-get", "download", "-q", spec], f"apt-get download {spec}", cwd=tmp)
        except DebError:
            # the index may predate the lock: refresh it once, then give up with apt's reason
            _run(["apt-get", "update", "-q"], "apt-get update")
            _run(["apt-get", "download", "-q", spec], f"apt-get download {spec}", cwd=tmp)
        got = sorted(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise DebError(f"apt-get download {spec}: expected one .deb, got {[p.name for p in got]}")
        digest = _sha256(got[0])
        if digest != deb.sha256:
            raise DebError(f"{spec}: downloaded sha256 {digest} differs from the lock's {deb.sha256}")
        shutil.move(got[0], path)
    return path


def unpack(deb_path: Path, root: Path, exclude: Callable[[str], bool]) -> None:
    """Extract the package's files under `root`, /bin /sbin /lib /lib64 moved into /usr."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb_path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = merged_usr_path(member.name)
                if not name or exclude(name):
                    continue
                member.name = name
                if member.islnk():
                    member.linkname = merged_usr_path(member.linkname)
                if member.isdir() and (root / name).is_dir():
                    continue
                tar.extract(member, root, set_attrs=True, filter="fully_trusted")
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise DebError(f"dpkg-deb --fsys-tarfile {deb_path}: exit status {proc.returncode}")


def merged_usr_path(name: str) -> str:
    """`./lib/x/y` -> `usr/lib/x/y`; other paths lose their `./` only; the root itself -> ``."""
    path = name.removeprefix("./").removeprefix("/").rstrip("/")
    top = path.split("/", 1)[0]
    return f"usr/{path}" if top in MERGED_DIRS else path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: list[str], what: str, cwd: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise DebError(f"{what}: {cmd[0]} not found (a Debian host with apt is needed)") from exc
    if done.returncode != 0:
        raise DebError(f"{what}: exit status {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout
