"""Node registration codecs: golden strings from HAMi and round-trip properties."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.protocol import ProtocolError
from hami.protocol.node import (
    DeviceInfo,
    MigPlacement,
    MigProfile,
    decode_node_devices,
    decode_pair_scores,
    encode_node_devices,
    encode_node_devices_legacy,
    encode_pair_scores,
)

HAMI_FIXTURE = (
    '[{"id":"GPU-1","count":10,"devmem":8192,"devcore":100,"type":"NVIDIA-A100","numa":0,'
    '"health":true,"index":1,"mode":"hami-core"}]'
)


def test_decodes_hami_json_fixture() -> None:
    [dev] = decode_node_devices(HAMI_FIXTURE)
    assert dev == DeviceInfo(
        id="GPU-1",
        index=1,
        count=10,
        devmem=8192,
        devcore=100,
        type="NVIDIA-A100",
        numa=0,
        mode="hami-core",
        health=True,
    )


def test_omitted_zero_fields_mean_zero_and_unhealthy() -> None:
    [dev] = decode_node_devices('[{"id":"GPU-0","count":4,"devmem":100,"devcore":100,"type":"T4"}]')
    assert (dev.index, dev.numa, dev.health, dev.mode) == (0, 0, False, "hami-core")


def test_encoder_omits_zero_values_like_go() -> None:
    dev = DeviceInfo(id="GPU-0", count=10, devmem=8192, devcore=100, type="NVIDIA-T4", mode="hami-core")
    assert encode_node_devices([dev]) == (
        '[{"id":"GPU-0","count":10,"devmem":8192,"devcore":100,"type":"NVIDIA-T4","mode":"hami-core",'
        '"health":true}]'
    )


def test_custominfo_and_unknown_fields_are_ignored() -> None:
    [dev] = decode_node_devices(
        '[{"id":"a","count":1,"devmem":1,"devcore":1,"type":"x","custominfo":{"k":1}}]'
    )
    assert dev.id == "a"


def test_decodes_legacy_colon_form() -> None:
    value = (
        "GPU-00552014,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true,0,hami-core:"
        "GPU-2,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,1,false:"
    )
    a, b = decode_node_devices(value)
    assert a.type == "NVIDIA-Tesla V100-PCIE-32GB" and a.health and a.mode == "hami-core"
    assert b.numa == 1 and not b.health and b.mode == "hami-core" and b.index == 0


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("[1]", "device[0]: must be an object"),
        ('[{"id":"a","count":"x"}]', "'count' must be an integer"),
        ('[{"count":1}]', "'id' is missing"),
        ('{"id":1', "not valid JSON"),
        ("GPU-1,10,100:", "7 or 9 comma fields"),
        ("GPU-1,ten,1,1,T4,0,true:", "'count' must be an integer"),
        ("GPU-1,1,1,1,T4,0,yes:", "'health' must be true or false"),
    ],
)
def test_malformed_register_values_name_the_field(value: str, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        decode_node_devices(value)


@pytest.mark.parametrize(
    "value",
    [
        '[{"id":"GPU-1","count":10,"devmem":8192},{"id":"GPU-2","count":10,"devmem":8192},'
        '{"id":"GPU-1","index":1,"count":10,"devmem":8192}]',
        "GPU-1,10,8192,100,T4,0,true,0,hami-core:GPU-1,10,8192,100,T4,0,true,1,hami-core:",
        "GPU-1,10,8192,100,T4,0,true: GPU-1 ,10,8192,100,T4,0,true:",  # legacy ids are stripped
    ],
)
def test_duplicate_device_ids_are_refused(value: str) -> None:
    """Two cards with one id would let the ledger charge usage to one while the other looks empty."""
    with pytest.raises(ProtocolError, match=r"duplicate device id 'GPU-1'"):
        decode_node_devices(value)


def test_mig_profiles_round_trip() -> None:
    dev = DeviceInfo(
        id="GPU-m",
        count=7,
        devmem=40960,
        devcore=100,
        type="NVIDIA-A100",
        mode="mig",
        mig_profiles=(MigProfile("1g.5gb", 5120, 15, 1, (MigPlacement(0, 1), MigPlacement(6, 1))),),
    )
    assert decode_node_devices(encode_node_devices([dev])) == [dev]


_text = st.text(alphabet=st.characters(blacklist_characters=",:;", blacklist_categories=("Cs",)), min_size=1)
_device = st.builds(
    DeviceInfo,
    id=_text.filter(lambda s: s.strip() == s and s[0] not in "[{n"),
    count=st.integers(0, 2**31),
    devmem=st.integers(0, 2**40),
    devcore=st.integers(0, 10_000),
    type=_text,
    index=st.integers(0, 64),
    numa=st.integers(0, 8),
    mode=st.sampled_from(["hami-core", "mig", "mps"]),
    health=st.booleans(),
)


@given(st.lists(_device, max_size=8, unique_by=lambda d: d.id))
def test_json_round_trip(devices: list[DeviceInfo]) -> None:
    assert decode_node_devices(encode_node_devices(devices)) == devices


@given(
    st.lists(_device.filter(lambda d: d.id[0] not in "[{n"), min_size=1, max_size=8, unique_by=lambda d: d.id)
)
def test_legacy_round_trip(devices: list[DeviceInfo]) -> None:
    assert decode_node_devices(encode_node_devices_legacy(devices)) == devices


def test_pair_scores_golden_and_round_trip() -> None:
    value = '[{"uuid":"GPU-a","score":{"GPU-b":400,"GPU-c":20}}]'
    scores = decode_pair_scores(value)
    assert scores == {"GPU-a": {"GPU-b": 400, "GPU-c": 20}}
    assert encode_pair_scores(scores) == value
    with pytest.raises(ProtocolError):
        decode_pair_scores('[{"uuid":"a","score":{"b":"x"}}]')
