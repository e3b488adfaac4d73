"""The node's container directories and the pods they belong to.

The device plugin gives each container ``<hook>/vgpu/containers/<podUID>_<containerName>/`` and
points its ``CUDA_DEVICE_MEMORY_SHARED_CACHE`` at ``<id>.cache`` inside it. A pod UID never holds
``_`` and a container name is a DNS label, so the first ``_`` splits the name exactly; a name that
does not parse that way is not one of ours and is reported, never guessed at.

:class:`PodDirectory` is the monitor's view of the node's pods (fed by an informer's handlers,
read by the scrape thread under a lock). :func:`stale_dirs` decides which directories may be
removed: only when the pod list is synced, the pod has been absent from it for the grace period
*and* the directory is older than that (no entry created or removed in it for as long).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import MigAllocation, decode_mig_allocations, decode_pod_devices

log = logging.getLogger(__name__)

_UID = re.compile(r"[0-9a-f][0-9a-f-]{0,63}")
_CONTAINER = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ContainerDir:
    path: str
    pod_uid: str
    container: str
    cache: str | None  # the region file; None when the directory holds none yet
    #: the directory's own mtime (its entries created or removed); not the region's, which the
    #: monitor's own priority-feedback writes keep fresh
    mtime: float


def parse_dir_name(name: str) -> tuple[str, str] | None:
    """``"<uid>_<container>"`` -> (uid, container), or None when it is not that shape."""
    uid, sep, container = name.partition("_")
    if not sep or not _UID.fullmatch(uid) or not _CONTAINER.fullmatch(container):
        return None
    return uid, container


def scan(root: str, *, warned: set[str] | None = None) -> list[ContainerDir]:
    """Every container directory under ``root``; odd entries are logged once (``warned``) and skipped."""
    seen = warned if warned is not None else set()
    out = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("cannot list %s: %s", root, e.strerror)
        return []
    for entry in entries:
        parsed = parse_dir_name(entry.name)
        if parsed is None or not entry.is_dir(follow_symlinks=False):
            if entry.name not in seen:
                seen.add(entry.name)
                log.warning("%s: not a <podUID>_<container> directory; ignored", entry.path)
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
            caches = []
            for f in os.scandir(entry.path):
                if f.name.endswith(".cache") and f.is_file(follow_symlinks=False):
                    caches.append((f.stat(follow_symlinks=False).st_mtime, f.name, f.path))
        except OSError as e:
            log.warning("cannot read %s: %s", entry.path, e.strerror)
            continue
        cache = None
        if caches:
            caches.sort()
            cache = caches[-1][2]
            if len(caches) > 1 and entry.name not in seen:
                seen.add(entry.name)
                log.warning(
                    "%s holds %d region files; reading the newest, %s", entry.path, len(caches), cache
                )
        out.append(ContainerDir(entry.path, parsed[0], parsed[1], cache, mtime))
    return out


@dataclass(frozen=True, slots=True)
class PodRef:
    """What the monitor keeps of a pod: its names, and the cards its containers were given."""

    uid: str
    namespace: str
    name: str
    containers: tuple[str, ...]  # init containers first, then app containers (annotation order)
    devices: tuple[tuple[str, ...], ...]  # allocated card UUIDs per container index
    migs: tuple[MigAllocation, ...]

    def container_index(self, container: str) -> int | None:
        try:
            return self.containers.index(container)
        except ValueError:
            return None

    def uuids_of(self, container: str) -> tuple[str, ...]:
        i = self.container_index(container)
        return self.devices[i] if i is not None and i < len(self.devices) else ()


def pod_ref(pod: Obj) -> PodRef | None:
    meta = bodies.meta(pod)
    uid = bodies.uid(pod)
    if not uid:
        return None
    names = tuple(str(c.get("name")) for c in bodies.pod_containers(pod))
    ann = bodies.annotations(pod)
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    devices: tuple[tuple[str, ...], ...] = ()
    migs: tuple[MigAllocation, ...] = ()
    try:
        devices = tuple(
            tuple(d.uuid for d in c) for c in decode_pod_devices(ann.get(keys.VGPU_DEVICES_ALLOCATED, ""))
        )
    except ProtocolError as e:
        log.warning("pod %s: %s: %s", key, keys.VGPU_DEVICES_ALLOCATED, e)
    try:
        migs = tuple(decode_mig_allocations(ann.get(keys.VGPU_MIG_ALLOCATIONS, "")))
    except ProtocolError as e:
        log.warning("pod %s: %s: %s", key, keys.VGPU_MIG_ALLOCATIONS, e)
    return PodRef(
        str(uid), str(meta.get("namespace") or ""), str(meta.get("name") or ""), names, devices, migs
    )


class PodDirectory:
    """Pods on this node by UID; written by informer handlers, read by scrapes (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodRef] = {}
        self._synced = False

    def add(self, pod: Obj) -> None:
        ref = pod_ref(pod)
        if ref is not None:
            with self._lock:
                self._pods[ref.uid] = ref

    def update(self, _old: Obj, new: Obj) -> None:
        self.add(new)

    def remove(self, pod: Obj) -> None:
        uid = bodies.uid(pod)
        with self._lock:
            self._pods.pop(str(uid), None)

    def replace(self, pods: Iterable[Obj]) -> None:
        refs = [r for r in map(pod_ref, pods) if r is not None]
        with self._lock:
            self._pods = {r.uid: r for r in refs}

    def mark_synced(self, synced: bool = True) -> None:
        with self._lock:
            self._synced = synced

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._synced

    def get(self, uid: str) -> PodRef | None:
        with self._lock:
            return self._pods.get(uid)

    def snapshot(self) -> tuple[bool, dict[str, PodRef]]:
        with self._lock:
            return self._synced, dict(self._pods)


class GarbageCollector:
    """Removes the directories of containers whose pod is gone (see :func:`stale_dirs`)."""

    def __init__(self, root: str, pods: PodDirectory, *, grace: float) -> None:
        self.root = root
        self.pods = pods
        self.grace = grace
        self._absent_since: dict[str, float] = {}
        self._warned: set[str] = set()

    def run_once(self, now: float, wall: float) -> list[str]:
        """One pass: ``now`` is a monotonic clock, ``wall`` the time mtimes compare with."""
        synced, pods = self.pods.snapshot()
        dirs = scan(self.root, warned=self._warned)
        victims = stale_dirs(dirs, pods.keys() if synced else None, self._absent_since, now, wall, self.grace)
        removed = []
        for d in victims:
            if remove_dir(self.root, d.path):
                removed.append(d.path)
                self._absent_since.pop(d.path, None)
        return removed


def stale_dirs(
    dirs: Iterable[ContainerDir],
    live_uids: Iterable[str] | None,
    absent_since: dict[str, float],
    now: float,
    wall: float,
    grace: float,
) -> list[ContainerDir]:
    """The directories to remove. ``live_uids`` None means the pod list is not synced: nothing
    is removed and nothing counts as absent. ``absent_since`` (path -> monotonic time first seen
    without its pod) is updated in place."""
    if live_uids is None:
        absent_since.clear()
        return []
    live = set(live_uids)
    out = []
    present = set()
    for d in dirs:
        present.add(d.path)
        if d.pod_uid in live:
            absent_since.pop(d.path, None)
            continue
        first = absent_since.setdefault(d.path, now)
        if now - first >= grace and wall - d.mtime >= grace:
            out.append(d)
    for path in [p for p in absent_since if p not in present]:
        del absent_since[path]
    return out


def remove_dir(root: str, path: str) -> bool:
    """Remove one container directory: a real directory directly under ``root``, nothing else."""
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(root):
        log.error("refusing to remove %s: not directly under %s", path, root)
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        log.error("refusing to remove %s: not a directory", path)
        return False
    try:
        shutil.rmtree(path)
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
        return False
    log.info("removed %s: its pod is gone", path)
    return True
