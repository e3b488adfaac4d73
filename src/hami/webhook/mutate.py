"""The admission decision for one Pod: allow, deny (with a message), or allow with a JSON patch.

Pure: no I/O, no clocks, no globals. :func:`mutate_pod` takes the Pod exactly as the API server puts
it in ``AdmissionReview.request.object``, the request's namespace, that namespace's labels (or None
when unknown) and a :class:`WebhookPolicy`; it returns an :class:`AdmissionDecision` whose ``patch`` is a list
of RFC 6902 operations against that same Pod.

Rules, in order (HAMi v2.10 ``pkg/scheduler/webhook.go`` + ``nvidia/device.go: MutateAdmission``,
plus hami's hardening):

1. pod or namespace labelled ``hami.io/webhook: ignore`` → allowed, untouched;
2. no containers → denied;
3. ``schedulerName`` set to another scheduler → allowed, untouched (``default-scheduler`` is taken
   over when ``force_overwrite_default_scheduler``);
4. containers (init first) that switch enforcement off (``CUDA_DISABLE_CONTROL`` true-ish,
   ``GPU_CORE_UTILIZATION_POLICY=disable``, or either from ``valueFrom``) or that set a variable
   the device plugin sets for the shim (``CUDA_DEVICE_MEMORY_LIMIT[_<n>]``,
   ``CUDA_DEVICE_SM_LIMIT[_<n>]``, ``CUDA_DEVICE_MEMORY_SHARED_CACHE``, ``CUDA_OVERSUBSCRIBE``,
   ``LIBVGPU_*``; any value, ``valueFrom`` included) → denied unless the namespace is an
   enforcement opt-out namespace (the kubelet lets a container's env override the device
   plugin's; ``envFrom`` keys cannot be seen here);
5. every container's requests are parsed by every backend; an invalid one → denied naming the
   container, resource and reason;
6. each backend's admission hook (:class:`hami.devices.hooks.Admission`) defaults and validates
   the container (NVIDIA: ``nvidia.com/gpu: <defaultGPUNum>`` when only memory/cores are given;
   exclusive ``nvidia.com/gpucores: 100`` for whole-card requests; ``CUDA_TASK_PRIORITY`` from
   ``nvidia.com/priority``; ``GPU_CORE_UTILIZATION_POLICY`` when ``gpuCorePolicy`` is not default;
   ``NVIDIA_VISIBLE_DEVICES=none`` on GPU-less containers when ``overwriteEnv``; GPU containers
   may not override ``NVIDIA_VISIBLE_DEVICES``);
7. when any container asks for a managed device: privileged containers → denied; ``spec.nodeName``
   already set → denied; ``schedulerName`` → hami's; then each backend's pod-level admission edits
   (NVIDIA: ``runtimeClassName`` when configured and unset).

Every denial reason is collected, so one answer tells the user everything that is wrong.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hami.config import DeviceConfig
from hami.devices.base import DeviceRequest, RequestError
from hami.devices.hooks import AdmissionOutcome
from hami.devices.registry import BackendRegistry, default_registry
from hami.protocol import keys
from hami.protocol.enforcement import disables_control, disables_core_limit

__all__ = [
    "DEFAULT_SCHEDULER",
    "AdmissionDecision",
    "WebhookPolicy",
    "escape_pointer",
    "mutate_pod",
]

DEFAULT_SCHEDULER = "default-scheduler"

JsonPatchOp = dict[str, Any]


# Variables the device plugin sets for the in-container shim (native/src/config.c reads them). The
# kubelet lets a container's own env override the device plugin's, and a per-device
# ``CUDA_DEVICE_SM_LIMIT_<i>`` overrides the plain one, so a tenant may set none of them, to any
# value (an empty value unsets the limit).
_SHIM_VARIABLE = re.compile(
    r"(?:CUDA_DEVICE_MEMORY_LIMIT|CUDA_DEVICE_SM_LIMIT)(?:_[0-9]+)?"
    r"|CUDA_DEVICE_MEMORY_SHARED_CACHE|CUDA_OVERSUBSCRIBE|LIBVGPU_.*"
)


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Everything the decision depends on besides the pod itself."""

    registry: BackendRegistry
    scheduler_name: str = "hami-scheduler"
    force_overwrite_default_scheduler: bool = True
    enforcement_opt_out_namespaces: frozenset[str] = frozenset()

    @classmethod
    def from_config(
        cls,
        config: DeviceConfig,
        *,
        force_overwrite_default_scheduler: bool = True,
        registry: BackendRegistry | None = None,
    ) -> WebhookPolicy:
        return cls(
            registry=registry if registry is not None else default_registry(config),
            scheduler_name=config.hami.scheduler_name,
            force_overwrite_default_scheduler=force_overwrite_default_scheduler,
            enforcement_opt_out_namespaces=frozenset(config.hami.enforcement_opt_out_namespaces),
        )

    @classmethod
    def default(cls) -> WebhookPolicy:
        return cls.from_config(DeviceConfig.default())


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    """The answer for one pod.

    ``code`` is the HTTP-style status put in a denial's ``status.code`` (403 policy, 400 invalid
    request). ``skipped`` says the pod was left alone on purpose (``reason`` says why).
    """

    allowed: bool
    patch: tuple[JsonPatchOp, ...] = ()
    message: str = ""
    code: int = 200
    skipped: bool = False
    reason: str = ""
    warnings: tuple[str, ...] = ()
    managed: bool = False

    @staticmethod
    def skip(reason: str) -> AdmissionDecision:
        return AdmissionDecision(allowed=True, skipped=True, reason=reason)

    @staticmethod
    def deny(messages: Sequence[str], code: int = 403) -> AdmissionDecision:
        return AdmissionDecision(allowed=False, message="; ".join(messages), code=code, reason="denied")


def escape_pointer(token: str) -> str:
    """One JSON-pointer reference token (RFC 6901): ``~`` → ``~0``, ``/`` → ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def _denial(container: str, resource: str, reason: str) -> str:
    """The same shape as :class:`RequestError`: ``container 'c': <resource>: <reason>``."""
    return str(RequestError(container=container, resource=resource, reason=reason))


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return {}
    labels = meta.get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _ignored(labels: Mapping[str, Any] | None) -> bool:
    return labels is not None and labels.get(keys.WEBHOOK_LABEL) == keys.WEBHOOK_IGNORE


class _ContainerEdit:
    """JSON-patch operations against one container, tracking the container as patched so far."""

    def __init__(self, base: str, container: Mapping[str, Any], name: str, ops: list[JsonPatchOp]) -> None:
        self.base = base
        self.original = container
        self.name = name
        self.c: dict[str, Any] = copy.deepcopy(dict(container))
        self.ops = ops

    @property
    def container(self) -> Mapping[str, Any]:
        return self.original

    def has_resource(self, name: str) -> bool:
        """Whether the container as submitted names ``name`` in its limits or requests."""
        return _has_resource(self.original, name)

    def set_limit(self, name: str, value: str) -> None:
        resources = self.c.get("resources")
        if not isinstance(resources, dict):
            self.c["resources"] = {"limits": {name: value}}
            self.ops.append(
                {"op": "add", "path": f"{self.base}/resources", "value": {"limits": {name: value}}}
            )
            return
        limits = resources.get("limits")
        if not isinstance(limits, dict):
            resources["limits"] = {name: value}
            self.ops.append({"op": "add", "path": f"{self.base}/resources/limits", "value": {name: value}})
            return
        op = "replace" if name in limits else "add"
        limits[name] = value
        self.ops.append(
            {"op": op, "path": f"{self.base}/resources/limits/{escape_pointer(name)}", "value": value}
        )

    def set_env(self, name: str, value: str) -> bool:
        """Set ``name=value``, replacing the last existing entry; returns True if a different value was replaced."""
        entry = {"name": name, "value": value}
        env = self.c.get("env")
        if not isinstance(env, list):
            self.c["env"] = [entry]
            self.ops.append({"op": "add", "path": f"{self.base}/env", "value": [entry]})
            return False
        for i in range(len(env) - 1, -1, -1):
            e = env[i]
            if isinstance(e, Mapping) and e.get("name") == name:
                if e == entry:
                    return False
                env[i] = entry
                self.ops.append({"op": "replace", "path": f"{self.base}/env/{i}", "value": entry})
                return True
        env.append(entry)
        self.ops.append({"op": "add", "path": f"{self.base}/env/-", "value": entry})
        return False

    def env_value(self, name: str) -> str | None:
        env = self.c.get("env")
        if not isinstance(env, list):
            return None
        found: str | None = None
        for e in env:
            if isinstance(e, Mapping) and e.get("name") == name:
                v = e.get("value")
                found = v if isinstance(v, str) else ""
        return found


def _has_resource(container: Mapping[str, Any], name: str) -> bool:
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return False
    for part in ("limits", "requests"):
        values = resources.get(part)
        if isinstance(values, Mapping) and name in values:
            return True
    return False


def _enforcement_violations(cname: str, container: Mapping[str, Any], core_limit_off: bool) -> list[str]:
    """Reasons this container switches enforcement off, or sets a limit the device plugin sets,
    through its ``env`` list.

    ``core_limit_off``: the administrator already switched the core limit off for everyone
    (``gpuCorePolicy: disable`` or ``disableCoreLimit``), so a tenant's ``disable`` changes nothing.
    """
    out: list[str] = []
    env = container.get("env")
    if not isinstance(env, list):
        return out
    for e in env:
        if not isinstance(e, Mapping):
            continue
        name = e.get("name")
        if isinstance(name, str) and _SHIM_VARIABLE.fullmatch(name):
            out.append(
                _denial(
                    cname,
                    f"env {name}",
                    "is set by hami's device plugin for the GPU limits; a container may not set or "
                    "override it (it could lift the memory or compute limit)",
                )
            )
            continue
        if name not in (keys.ENV_DISABLE_CONTROL, keys.ENV_CORE_POLICY):
            continue
        if e.get("valueFrom") is not None and not (name == keys.ENV_CORE_POLICY and core_limit_off):
            out.append(
                _denial(
                    cname,
                    f"env {name}",
                    "may not come from valueFrom (it could switch GPU enforcement off)",
                )
            )
            continue
        raw = e.get("value")
        value = raw.strip() if isinstance(raw, str) else ""
        if name == keys.ENV_DISABLE_CONTROL and disables_control(value):
            out.append(_denial(cname, f"env {name}", f"{raw!r} switches GPU enforcement off"))
        elif name == keys.ENV_CORE_POLICY and disables_core_limit(value) and not core_limit_off:
            out.append(_denial(cname, f"env {name}", f"{raw!r} switches the GPU core limit off"))
    return out


def _is_privileged(container: Mapping[str, Any]) -> bool:
    sc = container.get("securityContext")
    return isinstance(sc, Mapping) and sc.get("privileged") is True


def mutate_pod(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    namespace_labels: Mapping[str, Any] | None,
    policy: WebhookPolicy,
) -> AdmissionDecision:
    """Decide on one Pod CREATE. ``namespace`` is ``AdmissionRequest.namespace`` (the pod's own
    ``metadata.namespace`` is often empty on CREATE); ``namespace_labels`` None means unknown."""
    if _ignored(_labels(pod)):
        return AdmissionDecision.skip(f"pod labelled {keys.WEBHOOK_LABEL}={keys.WEBHOOK_IGNORE}")
    if _ignored(namespace_labels):
        return AdmissionDecision.skip(
            f"namespace {namespace!r} labelled {keys.WEBHOOK_LABEL}={keys.WEBHOOK_IGNORE}"
        )

    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return AdmissionDecision.deny(["pod has no spec"], code=400)
    containers = spec.get("containers")
    init_containers = spec.get("initContainers")
    if not isinstance(containers, list) or not containers:
        return AdmissionDecision.deny(["pod has no containers"], code=400)
    if init_containers is None:
        init_containers = []
    if not isinstance(init_containers, list):
        return AdmissionDecision.deny(["spec.initContainers must be a list"], code=400)

    scheduler = spec.get("schedulerName")
    if (
        scheduler
        and scheduler != policy.scheduler_name
        and not (scheduler == DEFAULT_SCHEDULER and policy.force_overwrite_default_scheduler)
    ):
        return AdmissionDecision.skip(f"schedulerName {scheduler!r} belongs to another scheduler")

    ops: list[JsonPatchOp] = []
    denials: list[str] = []
    invalid: list[str] = []
    warnings: list[str] = []
    opted_out = namespace in policy.enforcement_opt_out_namespaces
    admissions = policy.registry.admissions()
    core_limit_off = any(adm.core_limit_off() for _, adm in admissions)
    out = AdmissionOutcome(opted_out=opted_out, invalid=invalid, denials=denials, warnings=warnings)

    managed = False
    privileged: list[str] = []
    used: set[str] = set()
    entries = [("initContainers", i, c) for i, c in enumerate(init_containers)] + [
        ("containers", i, c) for i, c in enumerate(containers)
    ]
    for field_name, index, container in entries:
        if not isinstance(container, Mapping):
            invalid.append(f"spec.{field_name}[{index}] must be an object")
            continue
        cname = str(container.get("name") or f"{field_name}[{index}]")
        if not opted_out:
            out.denials += _enforcement_violations(cname, container, core_limit_off)
        if _is_privileged(container):
            privileged.append(cname)

        requests: dict[str, DeviceRequest] = {}
        bad = False
        for backend in policy.registry:
            try:
                req = backend.parse_container(container)
            except RequestError as exc:
                invalid.append(str(exc))
                bad = True
                continue
            if req is not None:
                requests[backend.vendor] = req
        if bad:
            continue
        if requests:
            managed = True
        used.update(requests)

        edit = _ContainerEdit(f"/spec/{field_name}/{index}", container, cname, ops)
        for vendor, admission in admissions:
            admission.admit_container(requests.get(vendor), edit, out)

    if invalid:
        return AdmissionDecision.deny(invalid + denials, code=400)

    if managed:
        for cname in privileged:
            denials.append(
                _denial(
                    cname,
                    "securityContext.privileged",
                    "privileged containers may not run in a pod that uses shared devices "
                    "(a privileged container sees every device on the node)",
                )
            )
        node_name = spec.get("nodeName")
        if node_name:
            denials.append(
                f"pod: spec.nodeName: already set to {node_name!r}; a pod that uses shared devices must be "
                f"placed by {policy.scheduler_name!r}"
            )
    if denials:
        return AdmissionDecision.deny(denials, code=403)

    if managed:
        if scheduler != policy.scheduler_name:
            op = "replace" if "schedulerName" in spec else "add"
            ops.append({"op": op, "path": "/spec/schedulerName", "value": policy.scheduler_name})
        for vendor, admission in admissions:
            ops += admission.admit_pod(spec, vendor in used)

    return AdmissionDecision(
        allowed=True,
        patch=tuple(ops),
        managed=managed,
        reason="mutated" if ops else "unchanged",
        warnings=tuple(warnings),
    )
