"""NVIDIA container requests (issue 2, point 4): resources, HAMi's defaults, and every invalid input."""

from __future__ import annotations

from typing import Any

import pytest

from hami.config import NvidiaConfig
from hami.devices import DeviceRequest, RequestError
from hami.devices.nvidia import NvidiaBackend

GPU = "nvidia.com/gpu"
MEM = "nvidia.com/gpumem"
PCT = "nvidia.com/gpumem-percentage"
CORES = "nvidia.com/gpucores"
PRIO = "nvidia.com/priority"


def ctr(limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = limits
    if requests is not None:
        resources["requests"] = requests
    return {"name": "train", "resources": resources}


def parse(
    limits: dict[str, Any] | None = None,
    requests: dict[str, Any] | None = None,
    **config: Any,
) -> DeviceRequest | None:
    return NvidiaBackend(NvidiaConfig(**config)).parse_container(ctr(limits, requests))


def req(**kw: Any) -> DeviceRequest:
    return DeviceRequest(vendor="NVIDIA", **kw)


# --- what is read ----------------------------------------------------------------------------


def test_all_five_resources_are_read() -> None:
    got = parse({GPU: 2, MEM: "3000", CORES: "30", PRIO: "1"})
    assert got == req(count=2, mem=3000, cores=30, priority=1)


def test_percentage_is_read() -> None:
    assert parse({GPU: 1, PCT: 50, CORES: 20}) == req(count=1, mem_percentage=50, cores=20)


def test_limits_win_over_requests_per_resource() -> None:
    got = parse({GPU: 2, MEM: 4000}, {GPU: 1, MEM: 1000, CORES: 40})
    # count and memory come from limits; cores only exist in requests, so requests supply them
    assert got == req(count=2, mem=4000, cores=40)


def test_requests_alone_are_enough() -> None:
    assert parse(None, {GPU: 1, MEM: 1000, CORES: 10}) == req(count=1, mem=1000, cores=10)


def test_container_without_nvidia_resources_asks_for_nothing() -> None:
    assert parse() is None
    assert parse({"cpu": "1", "memory": "1Gi"}) is None
    assert NvidiaBackend().parse_container({"name": "x"}) is None
    assert NvidiaBackend().parse_container({"name": "x", "resources": None}) is None


def test_zero_count_asks_for_nothing() -> None:
    assert parse({GPU: 0}) is None
    assert parse({GPU: 0, MEM: 1000}) is None


def test_priority_alone_asks_for_nothing() -> None:
    assert parse({PRIO: 1}) is None


def test_quantity_forms_are_exact() -> None:
    assert parse({GPU: "1", MEM: "1k", CORES: "1e1"}) == req(count=1, mem=1000, cores=10)


def test_custom_resource_names_from_config() -> None:
    got = NvidiaBackend(NvidiaConfig(resource_count_name="example.com/vgpu")).parse_container(
        ctr({"example.com/vgpu": 1, MEM: 100})
    )
    assert got == req(count=1, mem=100)
    # the default name is no longer ours
    assert (
        NvidiaBackend(NvidiaConfig(resource_count_name="example.com/vgpu")).parse_container(ctr({GPU: 1}))
        is None
    )


# --- defaults ----------------------------------------------------------------------------------


def test_whole_card_when_neither_memory_nor_percentage_and_cores_100() -> None:
    # HAMi's webhook injects gpucores=100 on whole-card requests (defaultExclusiveCoreIfNeeded)
    assert parse({GPU: 1}) == req(count=1, mem_percentage=100, cores=100)


def test_percentage_100_without_cores_is_a_whole_exclusive_card() -> None:
    assert parse({GPU: 1, PCT: 100}) == req(count=1, mem_percentage=100, cores=100)


def test_whole_card_keeps_explicit_cores() -> None:
    assert parse({GPU: 1, CORES: 30}) == req(count=1, mem_percentage=100, cores=30)
    assert parse({GPU: 1, CORES: 0}) == req(count=1, mem_percentage=100, cores=0)


def test_default_memory_replaces_the_whole_card() -> None:
    got = parse({GPU: 1}, default_memory=2000)
    assert got == req(count=1, mem=2000, cores=0)


def test_default_cores_apply_to_partial_requests_only() -> None:
    assert parse({GPU: 1, MEM: 1000}, default_cores=25) == req(count=1, mem=1000, cores=25)
    assert parse({GPU: 1, PCT: 40}, default_cores=25) == req(count=1, mem_percentage=40, cores=25)
    assert parse({GPU: 1}, default_cores=25) == req(count=1, mem_percentage=100, cores=100)
    assert parse({GPU: 1, MEM: 1000, CORES: 5}, default_cores=25) == req(count=1, mem=1000, cores=5)


@pytest.mark.parametrize(
    "limits",
    [{MEM: 1000}, {CORES: 20}, {PCT: 30}],
    ids=["memory-only", "cores-only", "percentage-only"],
)
def test_default_gpu_num_when_only_memory_or_cores_given(limits: dict[str, Any]) -> None:
    got = parse(limits, default_gpu_num=3)
    assert got is not None
    assert got.count == 3
    got = parse(limits)
    assert got is not None
    assert got.count == 1  # HAMi's default defaultGPUNum


def test_explicit_memory_wins_over_percentage() -> None:
    assert parse({GPU: 1, MEM: 1000, PCT: 50}) == req(count=1, mem=1000, cores=0)


def test_zero_percentage_means_unset() -> None:
    assert parse({GPU: 1, PCT: 0}) == req(count=1, mem_percentage=100, cores=100)
    assert parse({GPU: 1, PCT: 0, MEM: 10}) == req(count=1, mem=10, cores=0)


def test_memory_factor_scales_memory_only() -> None:
    got = parse({GPU: 1, MEM: 3, CORES: 10}, memory_factor=1024)
    assert got == req(count=1, mem=3072, cores=10)
    # default memory is already MiB: not scaled again
    assert parse({GPU: 1}, memory_factor=1024, default_memory=500) == req(count=1, mem=500, cores=0)


def test_mem_for_resolves_percentage_against_the_card() -> None:
    assert req(count=1, mem_percentage=25).mem_for(16000) == 4000
    assert req(count=1, mem_percentage=100).mem_for(15109) == 15109
    assert req(count=1, mem=3000).mem_for(16000) == 3000


# --- invalid input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "resource", "reason"),
    [
        ({GPU: -1}, GPU, "negative"),
        ({GPU: 1, MEM: -5}, MEM, "negative"),
        ({GPU: 1, PCT: -1}, PCT, "negative"),
        ({GPU: 1, CORES: -10}, CORES, "negative"),
        ({GPU: 1, PRIO: -1}, PRIO, "negative"),
        ({GPU: "1.5"}, GPU, "whole number"),
        ({GPU: "500m"}, GPU, "whole number"),
        ({GPU: 1, MEM: "0.5"}, MEM, "whole number"),
        ({GPU: 1, CORES: "12.5"}, CORES, "whole number"),
        ({GPU: 1, PCT: "33.3"}, PCT, "whole number"),
        ({GPU: "one"}, GPU, "not a valid Kubernetes quantity"),
        ({GPU: 1, MEM: "lots"}, MEM, "not a valid Kubernetes quantity"),
        ({GPU: True}, GPU, "not a number"),
        ({GPU: 1, CORES: 101}, CORES, "more than 100"),
        ({GPU: 1, PCT: 101}, PCT, "more than 100"),
        ({GPU: 1, MEM: 2**31}, MEM, "too large"),
        ({GPU: 2**31}, GPU, "too large"),
    ],
)
def test_invalid_requests_name_container_resource_and_reason(
    limits: dict[str, Any], resource: str, reason: str
) -> None:
    with pytest.raises(RequestError) as info:
        parse(limits)
    err = info.value
    assert err.container == "train"
    assert err.resource == resource
    assert reason in err.reason
    message = str(err)
    assert "'train'" in message
    assert resource in message
    assert reason in message


def test_invalid_value_in_requests_is_rejected_too() -> None:
    with pytest.raises(RequestError, match=r"nvidia\.com/gpucores: .*more than 100"):
        parse(None, {GPU: 1, CORES: 150})


def test_memory_overflowing_after_the_factor_is_rejected() -> None:
    with pytest.raises(RequestError, match=r"nvidia\.com/gpumem: .*too large") as info:
        parse({GPU: 1, MEM: 2**22}, memory_factor=1024)
    assert info.value.resource == MEM


def test_request_error_is_a_value_error_with_fields() -> None:
    err = RequestError(container="c", resource="nvidia.com/gpu", reason="bad")
    assert isinstance(err, ValueError)
    assert str(err) == "container 'c': nvidia.com/gpu: bad"


@pytest.mark.parametrize(
    "container",
    [
        {"name": "train", "resources": "nvidia.com/gpu=1"},
        {"name": "train", "resources": {"limits": ["nvidia.com/gpu"]}},
        {"name": "train", "resources": {"requests": 1}},
    ],
    ids=["resources", "limits", "requests"],
)
def test_malformed_resources_are_a_request_error_not_a_crash(container: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as info:
        NvidiaBackend().parse_container(container)
    assert info.value.container == "train"
    assert "resources" in info.value.resource


@pytest.mark.parametrize("resource", [GPU, MEM])
def test_int32_bound_is_inclusive(resource: str) -> None:
    """2**31 - 1 is the largest value accepted (the boundary from both sides; found by mutation testing)."""
    limits: dict[str, Any] = {GPU: 1, resource: 2**31 - 1}
    r = parse(limits)
    assert r is not None
    assert (r.count if resource == GPU else r.mem) == 2**31 - 1
    with pytest.raises(RequestError, match="too large"):
        parse({**limits, resource: 2**31})
