"""The kubelet device checkpoint reader: both DeviceIDs shapes, exact holders, errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hami.deviceplugin.kubeletcheckpoint import CheckpointError, Entry, holders, id_sets, parse, read

RES = "nvidia.com/gpu"


def doc(*entries: dict[str, object]) -> bytes:
    return json.dumps(
        {"Data": {"PodDeviceEntries": list(entries), "RegisteredDevices": {}}, "Checksum": 7}
    ).encode()


def entry(uid: str, ctr: str, ids: object, res: str = RES) -> dict[str, object]:
    return {"PodUID": uid, "ContainerName": ctr, "ResourceName": res, "DeviceIDs": ids, "AllocResp": "eA=="}


def test_per_numa_and_legacy_list_ids() -> None:
    got = parse(
        doc(entry("u1", "init", {"0": ["b"], "1": ["a"]}), entry("u2", "app", ["c"]), entry("u3", "x", None))
    )
    assert got == [
        Entry("u1", "init", RES, ("a", "b")),
        Entry("u2", "app", RES, ("c",)),
        Entry("u3", "x", RES, ()),
    ]


def test_holders_are_exact_and_per_resource() -> None:
    entries = parse(
        doc(
            entry("u1", "init", {"-1": ["a", "b"]}),
            entry("u1", "app", {"-1": ["a", "b"]}),
            entry("u2", "app", {"-1": ["a"]}),
            entry("u3", "app", {"-1": ["a", "b"]}, res="amd.com/gpu"),
        )
    )
    assert holders(entries, RES, ["b", "a"]) == {"u1": ("init", "app")}
    assert holders(entries, RES, ["a"]) == {"u2": ("app",)}
    assert holders(entries, RES, ["z"]) == {}
    assert id_sets(entries, RES) == {("a", "b"), ("a",)}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "not JSON"),
        (b"[]", "Data: expected an object"),
        (json.dumps({"Data": {"PodDeviceEntries": {}}}).encode(), "PodDeviceEntries: expected a list"),
        (json.dumps({"Data": {"PodDeviceEntries": [1]}}).encode(), "PodDeviceEntries[0]: expected an object"),
        (doc(entry("", "c", [])), "PodDeviceEntries[0].PodUID"),
        (doc(entry("u", "c", "a")), "PodDeviceEntries[0].DeviceIDs"),
        (doc(entry("u", "c", {"0": [1]})), "DeviceIDs: expected lists of strings"),
    ],
)
def test_malformed_checkpoints_name_the_field(raw: bytes, fragment: str) -> None:
    with pytest.raises(CheckpointError, match="ckpt") as err:
        parse(raw, "ckpt")
    assert fragment in str(err.value)


def test_missing_file_means_no_allocation(tmp_path: Path) -> None:
    assert read(tmp_path / "absent") == []
    assert parse(json.dumps({"Data": {}}).encode()) == []
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="dir"):
        read(tmp_path / "dir")
