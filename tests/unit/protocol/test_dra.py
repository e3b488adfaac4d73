"""Reading a ResourceClaim's allocation (`hami.protocol.dra.claim_allocations`)."""

from __future__ import annotations

from typing import Any

import pytest

from hami.protocol import keys
from hami.protocol.dra import DeviceAllocation, claim_allocations
from hami.protocol.errors import ProtocolError


def claim(*results: Any, allocated: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "c", "uid": "u1"}}
    if allocated:
        body["status"] = {"allocation": {"devices": {"results": list(results)}}}
    return body


def result(**kw: Any) -> dict[str, Any]:
    return {"request": "gpu", "driver": keys.DRA_DRIVER, "pool": "n1", "device": "gpu-0", **kw}


def test_consumed_capacity_in_hami_units() -> None:
    got = claim_allocations(claim(result(consumedCapacity={"memory": "4Gi", "cores": "30"}, shareID="s-1")))
    assert got == [DeviceAllocation("gpu", keys.DRA_DRIVER, "n1", "gpu-0", 4096, 30, "s-1")]


def test_bytes_round_up_to_whole_mib_and_whole_devices_have_no_capacity() -> None:
    (a, b) = claim_allocations(claim(result(consumedCapacity={"memory": "1500000"}), result(device="gpu-1")))
    assert (a.memory_mib, a.cores) == (2, None)
    assert (b.device, b.memory_mib, b.cores, b.share_id) == ("gpu-1", None, None, None)


def test_other_drivers_are_skipped() -> None:
    assert claim_allocations(claim(result(driver="gpu.nvidia.com"))) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (claim(allocated=False), "claim ns/c (u1): status.allocation: the claim is not allocated"),
        (
            claim(result(device="")),
            "claim ns/c (u1): status.allocation.devices.results[0].device: expected a non-empty string, got ''",
        ),
        (
            claim(result(consumedCapacity={"memory": "-1Mi"})),
            "claim ns/c (u1): status.allocation.devices.results[0].consumedCapacity.memory: must not be "
            "negative, got '-1Mi'",
        ),
        (
            claim(result(consumedCapacity=["memory"])),
            "claim ns/c (u1): status.allocation.devices.results[0].consumedCapacity: expected a map, got ['memory']",
        ),
        (
            claim("gpu-0"),
            "claim ns/c (u1): status.allocation.devices.results[0]: expected an object, got 'gpu-0'",
        ),
    ],
)
def test_malformed_allocations_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        claim_allocations(body)
    assert str(exc.value) == message


def test_bad_quantity_names_the_field() -> None:
    with pytest.raises(ProtocolError, match=r"results\[0\]\.consumedCapacity\.cores: quantity 'x'"):
        claim_allocations(claim(result(consumedCapacity={"cores": "x"})))
