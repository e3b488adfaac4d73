"""A tenant cannot switch GPU enforcement off through its container env (HAMi-core Allocate).

The kubelet gives the runtime the device plugin's env and the container's, so Allocate always sets
GPU_CORE_UTILIZATION_POLICY and CUDA_DISABLE_CONTROL itself and keeps the ld.so.preload mount
unless the namespace is in hami.enforcementOptOutNamespaces. CUDA_DISABLE_CONTROL is read like
the admission webhook reads it: anything but empty/0/f/false (any case, trimmed) means "off", and
a valueFrom reference counts as an attempt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hami.deviceplugin.allocate import PodAllocator
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.modes import opt_out_request
from hami.deviceplugin.settings import NodeSettings, build_inventory
from hami.deviceplugin.sources import FakeSource
from hami.protocol import keys
from hami.testing.memkube import MemoryKube

NODE = "n1"
GPU = "GPU-aaaa"
PRELOAD = "/etc/ld.so.preload"
OFF_VALUES = ["true", "TRUE", "1", "yes", "on", "t", " true ", "disable", "anything"]
ON_VALUES = ["", "0", "f", "F", "false", "False", " FALSE "]


def env_entry(name: str, value: str | None = None, ref: bool = False) -> dict[str, Any]:
    if ref:
        return {"name": name, "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}
    return {"name": name, "value": value}


def scenario(ns: str, env: list[dict[str, Any]]) -> MemoryKube:
    pod = {
        "metadata": {
            "name": "p1",
            "namespace": ns,
            "uid": "uid-p1",
            "annotations": {
                keys.VGPU_NODE: NODE,
                keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING,
                keys.VGPU_DEVICES_TO_ALLOCATE: f"{GPU},NVIDIA,1000,30:;",
            },
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "env": env}]},
        "status": {"phase": "Pending"},
    }
    node = {"metadata": {"name": NODE, "annotations": {keys.NODE_LOCK: f"2026-11-22T07:00:00Z,{ns},p1"}}}
    return MemoryKube([node], [pod])


async def allocate(kube: MemoryKube, tmp_path: Path, **settings: Any) -> api_pb2.ContainerAllocateResponse:
    src = FakeSource({"cards": [{"uuid": GPU, "memory": 16384}]})
    s = NodeSettings(
        node_name=NODE,
        hook_path=str(tmp_path),
        enforcement_opt_out_namespaces=frozenset({"trusted"}),
        **settings,
    )
    alloc = PodAllocator(kube, s, src, lambda: build_inventory(src, s))
    req = api_pb2.AllocateRequest()
    req.container_requests.add(devices_ids=[f"{GPU}-0"])
    resp = await alloc.allocate(req)
    return resp.container_responses[0]


def mounts(car: api_pb2.ContainerAllocateResponse) -> list[str]:
    return [m.container_path for m in car.mounts]


@pytest.mark.parametrize("value", OFF_VALUES)
def test_any_non_false_value_asks_to_disable_control(value: str) -> None:
    want = opt_out_request({"env": [env_entry(keys.ENV_DISABLE_CONTROL, value)]})
    assert want.disable_control and want.disable_control_literal


@pytest.mark.parametrize("value", ON_VALUES)
def test_false_spellings_leave_control_on(value: str) -> None:
    assert not opt_out_request({"env": [env_entry(keys.ENV_DISABLE_CONTROL, value)]}).disable_control


def test_value_from_counts_as_an_attempt_and_last_entry_wins() -> None:
    want = opt_out_request({"env": [env_entry(keys.ENV_DISABLE_CONTROL, ref=True)]})
    assert want.disable_control and not want.disable_control_literal
    want = opt_out_request({"env": [env_entry(keys.ENV_CORE_POLICY, ref=True)]})
    assert want.core_policy_off
    # the kubelet keeps the last entry of a name
    env = [env_entry(keys.ENV_DISABLE_CONTROL, "true"), env_entry(keys.ENV_DISABLE_CONTROL, "false")]
    assert not opt_out_request({"env": env}).disable_control
    env = [env_entry(keys.ENV_DISABLE_CONTROL, "false"), env_entry(keys.ENV_DISABLE_CONTROL, "1")]
    assert opt_out_request({"env": env}).disable_control
    assert opt_out_request({"env": [env_entry(keys.ENV_CORE_POLICY, " Disable ")]}).core_policy_off


@pytest.mark.parametrize("value", ["1", "yes", "TRUE", "t"])
async def test_tenant_cannot_disable_control_with_any_spelling(tmp_path: Path, value: str) -> None:
    kube = scenario("tenant", [env_entry(keys.ENV_DISABLE_CONTROL, value)])
    car = await allocate(kube, tmp_path)
    assert PRELOAD in mounts(car)
    assert car.envs[keys.ENV_DISABLE_CONTROL] == "false"
    assert car.envs[keys.ENV_CORE_POLICY] == "default"
    assert [e[1] for e in kube.events] == ["EnforcementOptOutDenied"]
    assert keys.ENV_DISABLE_CONTROL in kube.events[0][2]


async def test_tenant_value_from_is_denied(tmp_path: Path) -> None:
    kube = scenario("tenant", [env_entry(keys.ENV_DISABLE_CONTROL, ref=True)])
    car = await allocate(kube, tmp_path)
    assert PRELOAD in mounts(car)
    assert car.envs[keys.ENV_DISABLE_CONTROL] == "false"
    assert [e[1] for e in kube.events] == ["EnforcementOptOutDenied"]


@pytest.mark.parametrize("value", ["1", "yes", "True"])
async def test_opt_out_namespace_may_disable_control(tmp_path: Path, value: str) -> None:
    kube = scenario("trusted", [env_entry(keys.ENV_DISABLE_CONTROL, value)])
    car = await allocate(kube, tmp_path)
    assert PRELOAD not in mounts(car)
    assert keys.ENV_DISABLE_CONTROL not in car.envs  # the container's own value stands
    assert car.envs[keys.ENV_CORE_POLICY] == "default"
    assert not kube.events


async def test_opt_out_namespace_value_from_keeps_enforcement(tmp_path: Path) -> None:
    """The value behind valueFrom is unknown to the plugin: enforcement stays on, no denial event."""
    kube = scenario("trusted", [env_entry(keys.ENV_DISABLE_CONTROL, ref=True)])
    car = await allocate(kube, tmp_path)
    assert PRELOAD in mounts(car)
    assert car.envs[keys.ENV_DISABLE_CONTROL] == "false"
    assert not kube.events


@pytest.mark.parametrize("configured", ["default", "force"])
async def test_core_policy_is_always_the_configured_one(tmp_path: Path, configured: str) -> None:
    for env in (
        [],
        [env_entry(keys.ENV_CORE_POLICY, "DISABLE")],
        [env_entry(keys.ENV_CORE_POLICY, ref=True)],
    ):
        kube = scenario("tenant", env)
        car = await allocate(kube, tmp_path, gpu_core_policy=configured)
        assert car.envs[keys.ENV_CORE_POLICY] == configured
        assert PRELOAD in mounts(car)
        assert [e[1] for e in kube.events] == (["EnforcementOptOutDenied"] if env else [])


async def test_core_policy_disable_in_opt_out_namespace(tmp_path: Path) -> None:
    kube = scenario("trusted", [env_entry(keys.ENV_CORE_POLICY, "disable")])
    car = await allocate(kube, tmp_path, gpu_core_policy="force")
    assert car.envs[keys.ENV_CORE_POLICY] == "disable"
    assert PRELOAD in mounts(car)  # only the compute limiter is off
    assert not kube.events


@pytest.mark.parametrize("settings", [{"disable_core_limit": True}, {"gpu_core_policy": "disable"}])
async def test_admin_disabled_core_limit_is_kept(tmp_path: Path, settings: dict[str, Any]) -> None:
    """A tenant's `disable` changes nothing when the administrator already switched it off (no
    denial event, and the admin's `disable` is not turned back into `default`)."""
    kube = scenario("tenant", [env_entry(keys.ENV_CORE_POLICY, "disable")])
    car = await allocate(kube, tmp_path, **settings)
    assert car.envs[keys.ENV_CORE_POLICY] == "disable"
    assert not kube.events
