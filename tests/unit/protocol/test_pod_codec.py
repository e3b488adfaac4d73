"""Pod device encoding, MIG allocation JSON, node lock, handshake, weights and quantities."""

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.protocol import ProtocolError
from hami.protocol.handshake import decode_handshake, encode_requesting
from hami.protocol.nodelock import NodeLock, decode_node_lock, encode_node_lock
from hami.protocol.pod import (
    ContainerDevice,
    MigAllocation,
    decode_mig_allocations,
    decode_pod_devices,
    encode_mig_allocations,
    encode_pod_devices,
)
from hami.protocol.quantity import parse_int_quantity, parse_quantity
from hami.protocol.weights import ScoringWeights, decode_scoring_weights, encode_scoring_weights

GOLDEN = ";GPU-aaaa,NVIDIA,3000,30:;GPU-bbbb,NVIDIA,5000,0:GPU-cccc,NVIDIA,5000,0:;"


def test_golden_pod_encoding_keeps_empty_containers() -> None:
    pod = decode_pod_devices(GOLDEN)
    assert pod == [
        (),
        (ContainerDevice("GPU-aaaa", "NVIDIA", 3000, 30),),
        (ContainerDevice("GPU-bbbb", "NVIDIA", 5000, 0), ContainerDevice("GPU-cccc", "NVIDIA", 5000, 0)),
    ]
    assert encode_pod_devices(pod) == GOLDEN


def test_trailing_separator_is_optional_and_hami_padding_is_tolerated() -> None:
    assert decode_pod_devices("GPU-x,NVIDIA,1,2:") == [(ContainerDevice("GPU-x", "NVIDIA", 1, 2),)]
    assert decode_pod_devices(";;") == [(), ()]
    assert decode_pod_devices("") == []


@pytest.mark.parametrize("bad", ["GPU-x,NVIDIA,1:;", "GPU-x,NVIDIA,a,1:;", ",NVIDIA,1,1:;", "G,N,-1,0:;"])
def test_malformed_pod_devices(bad: str) -> None:
    with pytest.raises(ProtocolError, match=r"container\[0\]"):
        decode_pod_devices(bad)


_dev = st.builds(
    ContainerDevice,
    uuid=st.from_regex(r"GPU-[0-9a-f]{1,12}", fullmatch=True),
    type=st.sampled_from(["NVIDIA", "MLU", "DCU"]),
    usedmem=st.integers(0, 2**20),
    usedcores=st.integers(0, 100),
)


@given(st.lists(st.lists(_dev, max_size=4).map(tuple), max_size=6))
def test_pod_round_trip(pod: list[tuple[ContainerDevice, ...]]) -> None:
    assert decode_pod_devices(encode_pod_devices(pod)) == pod


def test_mig_allocations() -> None:
    golden = (
        '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-1","profile":"2g.10gb",'
        '"placement":{"start":4,"size":2},"migUUID":"MIG-1","gpuInstanceID":3,"computeInstanceID":0}]'
    )
    [a] = decode_mig_allocations(golden)
    assert a == MigAllocation(0, 0, "GPU-1", "2g.10gb", 4, 2, "MIG-1", 3, 0)
    assert encode_mig_allocations([a]) == golden
    reservation = MigAllocation(1, 0, "GPU-1", "1g.5gb", 0, 1)
    assert decode_mig_allocations(encode_mig_allocations([reservation])) == [reservation]
    with pytest.raises(ProtocolError, match="partial"):
        decode_mig_allocations(golden.replace(',"gpuInstanceID":3', ""))
    with pytest.raises(ProtocolError, match="duplicate"):
        decode_mig_allocations(encode_mig_allocations([reservation, reservation]))


def test_node_lock_value_and_legacy() -> None:
    lock = NodeLock(datetime(2026, 8, 21, 8, 20, 39, tzinfo=UTC), "default", "pod-a")
    assert encode_node_lock(lock) == "2026-08-21T08:20:39Z,default,pod-a"
    assert decode_node_lock("2026-08-21T08:20:39Z,default,pod-a") == lock
    legacy = decode_node_lock("2026-08-21T08:20:39+08:00")
    assert legacy.namespace is None and legacy.time.utcoffset() is not None
    with pytest.raises(ProtocolError):
        decode_node_lock("yesterday,default,pod")
    with pytest.raises(ProtocolError):
        decode_node_lock("2026-08-21T08:20:39Z,default")


def test_handshake_values() -> None:
    when = datetime(2026, 8, 21, 8, 20, 39)
    assert encode_requesting(when) == "Requesting_2026-08-21 08:20:39"
    assert decode_handshake("Requesting_2026-08-21 08:20:39").time == when
    assert (
        decode_handshake("Reported 2024-01-23 04:30:04.434037031 +0000 UTC m=+1104711.7").state == "reported"
    )
    assert decode_handshake("Deleted_garbage").state == "deleted"
    assert decode_handshake("whatever").state == "unknown"


def test_scoring_weights() -> None:
    w = decode_scoring_weights("slot=1,core=1,memory=3")
    assert w == ScoringWeights(1, 1, 3)
    assert encode_scoring_weights(w) == "slot=1,core=1,memory=3"
    for bad in [
        "slot=1,core=1",
        "slot=0,core=0,memory=0",
        "slot=-1,core=1,memory=1",
        "gpu=1,core=1,memory=1",
        "slot=1,slot=1,memory=1",
    ]:
        with pytest.raises(ProtocolError, match="device-scoring-weights"):
            decode_scoring_weights(bad)


def test_quantities() -> None:
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1e3") == 1000
    assert parse_int_quantity("0100", field="x") == 100  # decimal, never octal
    with pytest.raises(ProtocolError, match="whole number"):
        parse_int_quantity("1.5", field="nvidia.com/gpu")
    with pytest.raises(ProtocolError, match="valid Kubernetes quantity"):
        parse_quantity("ten")


@pytest.mark.parametrize(
    "value",
    [
        "1e999998",  # was ~26 s in int() building a million-digit number
        "1e999999999",  # was decimal.Overflow, not ProtocolError
        "1E31",
        "1e-999999999",
        "9223372036854775808",  # 2**63
        "-9223372036854775809",
        "8Ei",  # 2**63
        "1" + "0" * 2_000_000 + "Ei",  # mantissa so long that scaling overflows Decimal
    ],
)
def test_huge_int_quantities_are_refused_quickly(value: str) -> None:
    start = time.monotonic()
    with pytest.raises(ProtocolError, match=r"nvidia\.com/gpumem") as exc:
        parse_int_quantity(value, field="nvidia.com/gpumem")
    assert time.monotonic() - start < 1.0
    assert value[:20] in str(exc.value)  # names the value


def test_int_quantity_limits_are_int64() -> None:
    assert parse_int_quantity("9223372036854775807", field="x") == 2**63 - 1
    assert parse_int_quantity("-9223372036854775808", field="x") == -(2**63)
    assert parse_int_quantity("1e18", field="x") == 10**18
    assert parse_int_quantity("7Ei", field="x") == 7 * 2**60


def test_who_may_release_a_node_lock() -> None:
    from hami.protocol.nodelock import releasable_by

    assert releasable_by("2026-08-21T08:20:39Z,default,pod-a", "default", "pod-a")
    assert not releasable_by("2026-08-21T08:20:39Z,default,pod-b", "default", "pod-a")
    assert releasable_by("2026-08-21T08:20:39Z", "default", "pod-a")  # legacy: no owner recorded
    assert not releasable_by("garbage", "default", "pod-a")  # unreadable: left for acquire to replace
