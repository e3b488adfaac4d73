"""CDI spec files of the lock-free allocation mode: one file per allocation, named from its IDs.

An allocation's CDI device is `hami.io/vgpu=<name>`, where `<name>` is a hash of the sorted
replica IDs the kubelet allocated: Allocate can answer it before anyone knows which container it
is for, and a restarted plugin derives the same name at PreStartContainer without any memory.
The kubelet never hands one replica ID to two live allocations (an init container's IDs reused by
the app container after it are the same allocation, one container at a time), so a name belongs
to one allocation at a time.

Guarantees (`SpecStore`):
 * `write` replaces `<dir>/hami.io-vgpu-<name>.json` atomically (a temporary file not matching
   `*.json`/`*.yaml`, which the runtime's CDI cache ignores, then a rename): the runtime reads the
   old spec or the new one, never a partial file;
 * `collect` removes only this plugin's spec files (the `hami.io-vgpu-` prefix) whose allocation is
   not live and which were last written before the live set was taken, so a spec written by a
   PreStart that raced the collection is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from hami.deviceplugin.edits import ContainerEdits, cdi_spec

#: The CDI kind (`vendor/class`) of hami's lock-free devices.
CDI_KIND = "hami.io/vgpu"
#: Spec file names: `<prefix><name>.json`.
SPEC_PREFIX = "hami.io-vgpu-"
#: Hex digits of the hash in a device name (128 bits).
NAME_DIGITS = 32


def device_name(device_ids: Iterable[str]) -> str:
    """The CDI device name (without the kind) of the allocation holding `device_ids`."""
    joined = "\n".join(sorted(device_ids))
    return hashlib.sha256(joined.encode()).hexdigest()[:NAME_DIGITS]


def qualified_name(device_ids: Iterable[str]) -> str:
    """`hami.io/vgpu=<device_name>`: what Allocate returns in `cdi_devices`."""
    return f"{CDI_KIND}={device_name(device_ids)}"


class SpecStore:
    """The lock-free mode's spec files in one CDI spec directory (see module doc)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{SPEC_PREFIX}{name}.json"

    def write(self, name: str, edits: ContainerEdits) -> Path:
        """Write the spec declaring `hami.io/vgpu=<name>` with `edits` (atomically). Blocking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(name)
        tmp = self.directory / f".{target.name}.{os.getpid()}.tmp"
        body = json.dumps(cdi_spec(CDI_KIND, {name: edits}), indent=1, sort_keys=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return target

    def names(self) -> dict[str, float]:
        """This plugin's spec files: device name -> last write time (seconds). Blocking."""
        out: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(SPEC_PREFIX) and entry.name.endswith(".json"):
                    with contextlib.suppress(FileNotFoundError):
                        out[entry.name[len(SPEC_PREFIX) : -len(".json")]] = entry.stat().st_mtime
        return out

    def collect(self, live: Collection[str], taken_at: float) -> list[str]:
        """Remove spec files whose name is not in `live` and that were written before `taken_at`
        (the time the live set was read); returns the names removed. Blocking."""
        removed = []
        for name, mtime in sorted(self.names().items()):
            if name in live or mtime >= taken_at:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.path(name).unlink()
                removed.append(name)
        return removed
