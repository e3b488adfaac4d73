"""Wire-codec edges the mutation run (docs/mutation.md) found untested."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hami.protocol import ProtocolError
from hami.protocol.handshake import Handshake, decode_handshake
from hami.protocol.node import DeviceInfo, decode_node_devices, encode_node_devices_legacy
from hami.protocol.nodelock import NodeLock, decode_node_lock, encode_node_lock, format_rfc3339, parse_rfc3339
from hami.protocol.pod import decode_mig_allocations
from hami.protocol.weights import decode_scoring_weights

T0 = datetime(2026, 8, 21, 8, 20, 39)


def test_handshake_states_and_times() -> None:
    assert decode_handshake("Requesting_2026-08-21 08:20:39").state == "requesting"
    assert decode_handshake("Deleted_2026-08-21 08:20:39").state == "deleted"
    # HAMi's device plugin writes "Reported " + Go's time.Now().String(): fractions, zone, monotonic clock
    h = decode_handshake("Reported 2026-08-21 08:20:39.123456789 +0800 CST m=+12.5")
    assert (h.state, h.time) == ("reported", T0)
    assert decode_handshake("Reported soon") == Handshake("reported", None)


def test_weights_take_decimal_numbers_of_several_digits() -> None:
    w = decode_scoring_weights("slot=10,core=0,memory=25")
    assert (w.slot, w.core, w.memory) == (10, 0, 25)


@pytest.mark.parametrize("value", ["2026-08-21T08:20:39Z,,pod-a", "2026-08-21T08:20:39Z,default,"])
def test_node_lock_needs_both_owner_fields(value: str) -> None:
    with pytest.raises(ProtocolError, match="must be '<RFC3339>,<namespace>,<name>'"):
        decode_node_lock(value)


def test_node_lock_without_full_owner_encodes_as_a_bare_timestamp() -> None:
    when = T0.replace(tzinfo=UTC)
    assert encode_node_lock(NodeLock(when, "default", None)) == "2026-08-21T08:20:39Z"
    assert encode_node_lock(NodeLock(when, None, "pod-a")) == "2026-08-21T08:20:39Z"


def test_naive_times_are_utc() -> None:
    assert format_rfc3339(T0) == "2026-08-21T08:20:39Z"
    assert parse_rfc3339("2026-08-21T08:20:39") == T0.replace(tzinfo=UTC)
    assert format_rfc3339(datetime(2026, 8, 21, 8, 20, 39, 999)) == "2026-08-21T08:20:39Z"


MIG = (
    '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-1","profile":"2g.10gb",'
    '"placement":{"start":4,"size":2}}]'
)


@pytest.mark.parametrize("bad", ["-1", "true", "1.0", '"1"', "null"])
def test_mig_allocation_indices_are_non_negative_integers(bad: str) -> None:
    assert decode_mig_allocations(MIG)[0].container_index == 0
    with pytest.raises(ProtocolError, match="'containerIndex' must be a non-negative integer"):
        decode_mig_allocations(MIG.replace('"containerIndex":0', f'"containerIndex":{bad}'))


@pytest.mark.parametrize("field", ["gpuUUID", "profile"])
def test_mig_allocation_names_must_be_non_empty(field: str) -> None:
    value = MIG.replace('"GPU-1"', '""') if field == "gpuUUID" else MIG.replace('"2g.10gb"', '""')
    with pytest.raises(ProtocolError, match="'gpuUUID' and 'profile' must be non-empty strings"):
        decode_mig_allocations(value)


def test_legacy_node_encoding_is_exact_and_refuses_separators() -> None:
    a = DeviceInfo(id="GPU-a", count=10, devmem=8192, devcore=100, type="T4", index=1, mode="hami-core")
    b = DeviceInfo(id="GPU-b", count=10, devmem=8192, devcore=100, type="T4", index=2, health=False)
    text = encode_node_devices_legacy([a, b])
    assert text == "GPU-a,10,8192,100,T4,0,true,1,hami-core:GPU-b,10,8192,100,T4,0,false,2,hami-core:"
    # an empty entry in the middle is skipped, not the end of the list
    assert [d.id for d in decode_node_devices(text.replace(":GPU-b", "::GPU-b"))] == ["GPU-a", "GPU-b"]
    for bad in ("GPU,a", "GPU:a"):
        with pytest.raises(ProtocolError, match="cannot hold ',' or ':'"):
            encode_node_devices_legacy([DeviceInfo(id=bad, count=1, devmem=1, devcore=1, type="T4")])
