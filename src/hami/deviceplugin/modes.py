"""What a container receives in each operating mode — hami-core, MPS, MIG — as `ContainerEdits`.

HAMi's env and mounts (HAMi §2.6, §7): hami-core gets the per-card memory and SM limits, the shared
cache, the in-container library and (unless enforcement is switched off where that is allowed)
the `ld.so.preload` mount; MPS gets the MPS limits and directories; MIG gets the instance UUIDs.
Guarantees: pure — everything (settings, the container spec, the cache id and directory, the
driver's edits, the MIG UUIDs) comes in as arguments; nothing touches the API, the disk or a clock.
The enforcement decision (`decide_enforcement`) reads a container's opt-out env exactly as the
admission webhook does, and always sets both opt-out variables explicitly, because the kubelet
hands the runtime the device plugin's env *and* the container's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hami.deviceplugin.edits import ContainerEdits, Mount
from hami.deviceplugin.hostinstall import LIBRARY_NAME, PRELOAD_NAME, vgpu_dir
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.base import DriverEdits
from hami.protocol import keys
from hami.protocol.enforcement import disables_control, disables_core_limit
from hami.protocol.pod import ContainerDevices

#: Where the in-container library reads its limits (`VGPU_CONF_PATH` in native/src/vgpu.h): a file
#: the device plugin writes per container and mounts read-only, so a process cannot lift its limits
#: by changing its environment (docs/libvgpu.md, "Configuration").
VGPU_CONF_PATH = "/etc/hami/vgpu.conf"
#: The env entries of a hami-core container that go into that file (the `_<i>` variants included).
_CONF_KEYS = (
    keys.ENV_VISIBLE_DEVICES,
    keys.ENV_MEMORY_LIMIT,
    keys.ENV_SM_LIMIT,
    keys.ENV_SHARED_CACHE,
    keys.ENV_CORE_POLICY,
    keys.ENV_TASK_PRIORITY,
)
ENV_MPS_THREADS = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
ENV_MPS_MEM_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
ENV_MPS_PIPE = "CUDA_MPS_PIPE_DIRECTORY"
ENV_MPS_LOG = "CUDA_MPS_LOG_DIRECTORY"


@dataclass(frozen=True)
class OptOutRequest:
    """What a container's own env asks of enforcement (HAMi-core mode)."""

    #: CUDA_DISABLE_CONTROL is anything but empty/0/f/false (any case), or comes from valueFrom.
    disable_control: bool
    #: CUDA_DISABLE_CONTROL has a literal value (a valueFrom value cannot be known here).
    disable_control_literal: bool
    #: GPU_CORE_UTILIZATION_POLICY is `disable` (any case), or comes from valueFrom.
    core_policy_off: bool


def opt_out_request(container: Mapping[str, Any]) -> OptOutRequest:
    """Read a container's opt-out env like the webhook does: the kubelet passes both the device
    plugin's and the container's env to the runtime, so whatever the container says must be
    judged here too (the last entry of a name wins, as in the kubelet)."""
    literal: dict[str, str] = {}
    from_ref: set[str] = set()
    for e in container.get("env") or []:
        name = e.get("name")
        if name not in (keys.ENV_DISABLE_CONTROL, keys.ENV_CORE_POLICY):
            continue
        if e.get("valueFrom") is not None:
            from_ref.add(name)
            literal.pop(name, None)
        else:
            from_ref.discard(name)
            literal[name] = str(e.get("value") or "")
    dc_literal = keys.ENV_DISABLE_CONTROL in literal and disables_control(literal[keys.ENV_DISABLE_CONTROL])
    return OptOutRequest(
        disable_control=dc_literal or keys.ENV_DISABLE_CONTROL in from_ref,
        disable_control_literal=dc_literal,
        core_policy_off=disables_core_limit(literal.get(keys.ENV_CORE_POLICY, ""))
        or keys.ENV_CORE_POLICY in from_ref,
    )


@dataclass(frozen=True)
class Enforcement:
    """How a hami-core container is enforced, after weighing its opt-out env against the node's
    configuration."""

    #: The GPU_CORE_UTILIZATION_POLICY value the container gets.
    policy: str
    #: CUDA_DISABLE_CONTROL is honoured: no preload mount and no CUDA_DISABLE_CONTROL=false.
    disable_control: bool
    #: Opt-outs the container asked for that its namespace may not have (worth a warning event).
    denied: tuple[str, ...]
    #: Allowed to disable control, but asked through valueFrom, which cannot be read here:
    #: enforcement stays on (worth a log line).
    unreadable_disable_control: bool

    def denial_message(self, container_name: object) -> str | None:
        if not self.denied:
            return None
        return (
            f"container {container_name!r}: {' and '.join(self.denied)} ignored: namespace is not in "
            "hami.enforcementOptOutNamespaces"
        )


def core_policy(settings: NodeSettings) -> str:
    """The configured policy (`disableCoreLimit` means `disable`)."""
    if settings.disable_core_limit:
        return "disable"
    return settings.gpu_core_policy or "default"


def decide_enforcement(
    container: Mapping[str, Any], settings: NodeSettings, namespace: str | None
) -> Enforcement:
    """The container's enforcement: the preload mount (the part a container cannot override) is
    dropped and the core policy switched off only where the configuration allows opting out."""
    policy = core_policy(settings)
    want = opt_out_request(container)
    allowed = namespace in settings.enforcement_opt_out_namespaces
    denied: list[str] = []
    if want.disable_control and not allowed:
        denied.append(keys.ENV_DISABLE_CONTROL)
    if want.core_policy_off and policy != "disable":
        if allowed:
            policy = "disable"
        else:
            denied.append(f"{keys.ENV_CORE_POLICY}=disable")
    disable_control = allowed and want.disable_control_literal
    return Enforcement(
        policy=policy,
        disable_control=disable_control,
        denied=tuple(denied),
        unreadable_disable_control=allowed and want.disable_control and not disable_control,
    )


def task_priority(container: Mapping[str, Any], settings: NodeSettings) -> str | None:
    """The container's priority resource (limits first, then requests), if it asks for one."""
    res = container.get("resources") or {}
    for section in ("limits", "requests"):
        value = (res.get(section) or {}).get(settings.priority_resource_name)
        if value is not None:
            return str(value)
    return None


def container_cache_dir(settings: NodeSettings, pod_uid: str, container_name: object) -> str:
    """The host directory mounted as the container's `vgpu` directory (its shared region)."""
    return f"{vgpu_dir(settings.hook_path)}/containers/{pod_uid}_{container_name}"


def container_conf_path(cache_dir: str) -> str:
    """The host file mounted read-only at `VGPU_CONF_PATH` (beside, never inside, the writable
    cache directory)."""
    return f"{cache_dir}.conf"


def vgpu_conf(edits: ContainerEdits) -> str:
    """The library's configuration file for hami-core `edits`: `KEY=VALUE` lines of the limits,
    policy, priority, region and cards the container's env carries."""
    out = []
    for k, v in edits.env:
        if any(k == c or k.startswith(c + "_") for c in _CONF_KEYS) and "\n" not in v:
            out.append(f"{k}={v}\n")
    return "".join(out)


def hami_core_edits(
    devs: ContainerDevices,
    container: Mapping[str, Any],
    settings: NodeSettings,
    *,
    enforcement: Enforcement,
    cache_id: str,
    cache_dir: str,
    driver: DriverEdits,
) -> ContainerEdits:
    """HAMi-core: limits per card, the shared cache, the in-container library and the preload;
    the driver's own env and mounts after hami's (hami's variables win)."""
    vgpu = vgpu_dir(settings.hook_path)
    env: list[tuple[str, str]] = [(keys.ENV_VISIBLE_DEVICES, ",".join(d.uuid for d in devs))]
    # Per card as well as plain: the shim prefers CUDA_DEVICE_SM_LIMIT_<i>, so a plain
    # CUDA_DEVICE_SM_LIMIT from the container's envFrom (invisible at admission) changes nothing.
    for i, d in enumerate(devs):
        env.append((f"{keys.ENV_MEMORY_LIMIT}_{i}", f"{d.usedmem}m"))
        env.append((f"{keys.ENV_SM_LIMIT}_{i}", str(d.usedcores)))
    env.append((keys.ENV_SM_LIMIT, str(devs[0].usedcores)))
    env.append((keys.ENV_SHARED_CACHE, f"{vgpu}/{cache_id}.cache"))
    env.append((keys.ENV_LOG_LEVEL, settings.libcuda_log_level))
    if settings.memory_scaling > 1:
        env.append((keys.ENV_OVERSUBSCRIBE, "true"))
    priority = task_priority(container, settings)
    if priority is not None:
        env.append((keys.ENV_TASK_PRIORITY, priority))
    if not enforcement.disable_control:
        env.append((keys.ENV_DISABLE_CONTROL, "false"))
    env.append((keys.ENV_CORE_POLICY, enforcement.policy))
    library = f"{vgpu}/{LIBRARY_NAME}"
    mounts = [
        Mount(container_path=library, host_path=library, read_only=True),
        Mount(container_path=vgpu, host_path=cache_dir, read_only=False),
        Mount(container_path="/tmp/vgpulock", host_path="/tmp/vgpulock", read_only=False),
        Mount(container_path=VGPU_CONF_PATH, host_path=container_conf_path(cache_dir), read_only=True),
    ]
    if not enforcement.disable_control:
        mounts.append(
            Mount(container_path="/etc/ld.so.preload", host_path=f"{vgpu}/{PRELOAD_NAME}", read_only=True)
        )
    return ContainerEdits(env=tuple(env), mounts=tuple(mounts)).with_defaults(
        driver.env, (Mount(container_path=c, host_path=h, read_only=True) for c, h in driver.mounts)
    )


def mps_edits(devs: ContainerDevices, settings: NodeSettings) -> ContainerEdits:
    """MPS: the thread percentage and pinned memory limits, and the MPS pipe and log directories.

    Every card gets its pinned limit: MPS leaves a card missing from the list unlimited, so a card
    without a positive limit raises ValueError (Allocate refuses such a slice before it gets here)."""
    env: list[tuple[str, str]] = [(keys.ENV_VISIBLE_DEVICES, ",".join(d.uuid for d in devs))]
    if 0 < devs[0].usedcores < 100:
        env.append((ENV_MPS_THREADS, str(devs[0].usedcores)))
    zero = [d.uuid for d in devs if d.usedmem <= 0]
    if zero:
        raise ValueError(
            f"MPS pinned memory limit: card {zero[0]} has no memory assigned (it would be unlimited)"
        )
    env.append((ENV_MPS_MEM_LIMIT, ",".join(f"{i}={d.usedmem}M" for i, d in enumerate(devs))))
    env.append((ENV_MPS_PIPE, settings.mps_pipe_dir))
    env.append((ENV_MPS_LOG, settings.mps_log_dir))
    return ContainerEdits(
        env=tuple(env),
        mounts=(
            Mount(container_path=settings.mps_pipe_dir, host_path=settings.mps_pipe_dir, read_only=False),
            Mount(container_path=settings.mps_log_dir, host_path=settings.mps_log_dir, read_only=False),
        ),
    )


def mig_edits(mig_uuids: list[str]) -> ContainerEdits:
    """MIG: the instances' UUIDs; no HAMi-core injection (the hardware enforces the slice)."""
    return ContainerEdits(env=((keys.ENV_VISIBLE_DEVICES, ",".join(mig_uuids)),))
