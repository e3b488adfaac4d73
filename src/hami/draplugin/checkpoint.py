"""The plugin's record of prepared claims, kept on disk so that a restarted plugin still knows them.

`Checkpoint` maps claim UID -> `PreparedClaim` (the devices and CDI IDs returned to the kubelet and
the CDI spec file written for the claim). Guarantees: every change is written atomically before
the call returns (`hostinstall.write_atomically`), so a crash leaves the previous or the new state; a
missing file is an empty checkpoint; a corrupt or unreadable one raises `CheckpointError` naming
the file and the reason (the plugin refuses to start rather than forget claims it prepared).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hami.deviceplugin.hostinstall import write_atomically

#: Bumped when the file's shape changes incompatibly.
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """The checkpoint file cannot be read or written."""


@dataclass(frozen=True)
class PreparedDevice:
    """One device as returned to the kubelet in NodePrepareResources."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]


@dataclass(frozen=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]
    #: The CDI spec file written for this claim.
    cdi_file: str
    #: Host directories made for the claim's containers (shared regions), removed at unprepare.
    cache_dirs: tuple[str, ...] = field(default=())
    #: MIG instances made for the claim's MIG devices: (card UUID, GPU instance id), destroyed at
    #: unprepare.
    mig_instances: tuple[tuple[str, int], ...] = field(default=())


def _claim_from_json(uid: str, raw: Any) -> PreparedClaim:
    return PreparedClaim(
        uid=uid,
        namespace=str(raw["namespace"]),
        name=str(raw["name"]),
        devices=tuple(
            PreparedDevice(
                request_names=tuple(d["request_names"]),
                pool_name=str(d["pool_name"]),
                device_name=str(d["device_name"]),
                cdi_device_ids=tuple(d["cdi_device_ids"]),
            )
            for d in raw["devices"]
        ),
        cdi_file=str(raw["cdi_file"]),
        cache_dirs=tuple(raw.get("cache_dirs", ())),
        mig_instances=tuple((str(u), int(g)) for u, g in raw.get("mig_instances", ())),
    )


class Checkpoint:
    """Prepared claims by UID, persisted in one JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._claims: dict[str, PreparedClaim] = self._load()

    def _load(self) -> dict[str, PreparedClaim]:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.path}: cannot read: {e}") from e
        try:
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {FORMAT_VERSION}")
            return {uid: _claim_from_json(uid, c) for uid, c in raw["claims"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.path}: malformed: {e!r}") from e

    def _save(self) -> None:
        body = {
            "version": FORMAT_VERSION,
            "claims": {
                uid: {k: v for k, v in asdict(c).items() if k != "uid"} for uid, c in self._claims.items()
            },
        }
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            write_atomically(Path(self.path), json.dumps(body, indent=1, sort_keys=True).encode(), 0o600)
        except OSError as e:
            raise CheckpointError(f"checkpoint {self.path}: cannot write: {e}") from e

    def get(self, uid: str) -> PreparedClaim | None:
        return self._claims.get(uid)

    def claims(self) -> dict[str, PreparedClaim]:
        return dict(self._claims)

    def put(self, claim: PreparedClaim) -> None:
        """Record a prepared claim (persisted before returning)."""
        previous = self._claims.get(claim.uid)
        self._claims[claim.uid] = claim
        try:
            self._save()
        except CheckpointError:
            if previous is None:
                del self._claims[claim.uid]
            else:
                self._claims[claim.uid] = previous
            raise

    def remove(self, uid: str) -> None:
        """Forget a claim (persisted before returning); an unknown UID is fine."""
        previous = self._claims.pop(uid, None)
        if previous is None:
            return
        try:
            self._save()
        except CheckpointError:
            self._claims[uid] = previous
            raise
