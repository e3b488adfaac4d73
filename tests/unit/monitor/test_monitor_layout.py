"""Container directory -> pod mapping, and the collection of directories whose pod is gone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hami.monitor.layout import GarbageCollector, PodDirectory, parse_dir_name, remove_dir, scan, stale_dirs

UID = "0b8a4f8e-1111-2222-3333-444455556666"
UID2 = "9c9a4f8e-1111-2222-3333-444455556666"


def pod(uid: str, name: str = "p", ns: str = "default", **ann: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": ns, "annotations": ann},
        "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "main"}, {"name": "side"}]},
    }


@pytest.mark.parametrize(
    ("name", "want"),
    [
        (f"{UID}_main", (UID, "main")),
        (f"{UID}_a-b-1", (UID, "a-b-1")),
        ("0123456789abcdef0123456789abcdef_c", ("0123456789abcdef0123456789abcdef", "c")),  # static pod hash
        (f"{UID}", None),
        (f"{UID}_", None),
        (f"_{UID}", None),
        (f"{UID}_Main", None),  # not a DNS label
        (f"{UID}_a_b", None),  # a container name never holds "_"
        (f"{UID}_-x", None),
        ("garbage", None),
        (f"{UID.upper()}_main", None),
        ("..", None),
    ],
)
def test_directory_names_parse_exactly(name: str, want: tuple[str, str] | None) -> None:
    assert parse_dir_name(name) == want


def _mkdir(root: Path, name: str, *files: str) -> Path:
    d = root / name
    d.mkdir()
    for f in files:
        (d / f).write_bytes(b"x")
    return d


def test_scan_maps_directories_and_skips_odd_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _mkdir(tmp_path, f"{UID}_main", "a.cache", "notes.txt")
    _mkdir(tmp_path, f"{UID2}_side")  # no region yet
    _mkdir(tmp_path, "lost+found")
    (tmp_path / f"{UID}_file").write_bytes(b"")
    (tmp_path / f"{UID}_link").symlink_to(tmp_path / f"{UID}_main")
    warned: set[str] = set()
    dirs = sorted(scan(str(tmp_path), warned=warned), key=lambda d: d.container)
    assert [(d.pod_uid, d.container, os.path.basename(d.cache or "")) for d in dirs] == [
        (UID, "main", "a.cache"),
        (UID2, "side", ""),
    ]
    assert warned == {"lost+found", f"{UID}_file", f"{UID}_link"}
    caplog.clear()
    scan(str(tmp_path), warned=warned)
    assert not caplog.records  # each odd entry is reported once
    assert scan(str(tmp_path / "missing")) == []


def test_several_region_files_read_the_newest(tmp_path: Path) -> None:
    d = _mkdir(tmp_path, f"{UID}_main", "old.cache", "new.cache")
    os.utime(d / "old.cache", (1000, 1000))
    os.utime(d / "new.cache", (2000, 2000))
    (only,) = scan(str(tmp_path))
    assert only.cache is not None and only.cache.endswith("new.cache")


def test_pod_directory_follows_informer_events() -> None:
    pods = PodDirectory()
    p = pod(UID, **{"hami.io/vgpu-devices-allocated": ";GPU-a,NVIDIA,1000,30:GPU-b,NVIDIA,1000,30;"})
    pods.add(p)
    ref = pods.get(UID)
    assert ref is not None and (ref.namespace, ref.name) == ("default", "p")
    assert ref.containers == ("init", "main", "side")
    assert ref.uuids_of("main") == ("GPU-a", "GPU-b") and ref.uuids_of("init") == ()
    assert ref.uuids_of("side") == () and ref.container_index("nope") is None
    pods.update(p, pod(UID, name="p", ns="other"))
    assert pods.get(UID).namespace == "other"  # type: ignore[union-attr]
    pods.remove(p)
    assert pods.get(UID) is None
    pods.replace([pod(UID2)])
    assert pods.snapshot() == (False, {UID2: pods.get(UID2)})


def test_a_bad_annotation_still_names_the_pod(caplog: pytest.LogCaptureFixture) -> None:
    pods = PodDirectory()
    pods.add(pod(UID, **{"hami.io/vgpu-devices-allocated": "garbage", "hami.io/vgpu-mig-allocations": "{"}))
    ref = pods.get(UID)
    assert ref is not None and ref.name == "p" and ref.devices == () and ref.migs == ()
    assert "vgpu-devices-allocated" in caplog.text and "vgpu-mig-allocations" in caplog.text


def test_stale_dirs_needs_sync_absence_and_age(tmp_path: Path) -> None:
    _mkdir(tmp_path, f"{UID}_main", "a.cache")
    _mkdir(tmp_path, f"{UID2}_main", "a.cache")
    dirs = scan(str(tmp_path))
    wall = max(d.mtime for d in dirs)
    absent: dict[str, float] = {}
    # not synced: nothing is removed, and nothing starts counting as absent
    assert stale_dirs(dirs, None, absent, 0.0, wall + 1000, 60) == []
    assert absent == {}
    # synced, UID2 gone: it must stay absent for the grace period ...
    assert stale_dirs(dirs, [UID], absent, 0.0, wall + 1000, 60) == []
    assert list(absent) == [str(tmp_path / f"{UID2}_main")]
    assert stale_dirs(dirs, [UID], absent, 59.0, wall + 1000, 60) == []
    # ... and be unchanged for as long
    assert stale_dirs(dirs, [UID], absent, 60.0, wall + 30, 60) == []
    (victim,) = stale_dirs(dirs, [UID], absent, 60.0, wall + 60, 60)
    assert victim.pod_uid == UID2
    # the pod came back (a slow informer): the clock starts again
    assert stale_dirs(dirs, [UID, UID2], absent, 61.0, wall + 1000, 60) == []
    assert absent == {}
    # losing sync forgets what was counted
    stale_dirs(dirs, [UID], absent, 100.0, wall + 1000, 60)
    stale_dirs(dirs, None, absent, 200.0, wall + 1000, 60)
    assert stale_dirs(dirs, [UID], absent, 200.0, wall + 1000, 60) == []


def test_garbage_collector_removes_only_gone_pods(tmp_path: Path) -> None:
    keep = _mkdir(tmp_path, f"{UID}_main", "a.cache")
    gone = _mkdir(tmp_path, f"{UID2}_main", "a.cache")
    (gone / "sub").mkdir()
    odd = _mkdir(tmp_path, "not-ours")
    os.utime(gone, (0, 0))  # an old directory; its region was just written (the feedback's heartbeat)
    pods = PodDirectory()
    pods.add(pod(UID))
    gc = GarbageCollector(str(tmp_path), pods, grace=10)
    assert gc.run_once(now=0, wall=10**9) == []  # not synced yet
    pods.mark_synced()
    assert gc.run_once(now=0, wall=10**9) == []  # absent since now
    assert gc.run_once(now=10, wall=10**9) == [str(gone)]
    assert keep.exists() and odd.exists() and not gone.exists()


def test_remove_dir_refuses_anything_else(tmp_path: Path) -> None:
    root = tmp_path / "containers"
    root.mkdir()
    outside = _mkdir(tmp_path, "outside")
    assert not remove_dir(str(root), str(outside))
    nested = _mkdir(root, "a")
    (nested / "b").mkdir()
    assert not remove_dir(str(root), str(nested / "b"))
    (root / "link").symlink_to(outside)
    assert not remove_dir(str(root), str(root / "link"))
    assert outside.exists() and (nested / "b").exists()
    assert not remove_dir(str(root), str(root / "missing"))
