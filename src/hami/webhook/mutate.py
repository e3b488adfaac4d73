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
   (NVIDIA: ``runtimeClassName`` when configured and unset);
8. with DRA mode on (``policy.dra``) and the pod in DRA mode (:func:`hami.webhook.dra.wants_dra`):
   each container's NVIDIA resources are replaced by a claim on a ResourceClaimTemplate (returned in
   ``AdmissionDecision.objects`` for the server to create before answering), the first such
   container gets ``hami.io/dra: 1`` (the steering marker), the pod gets ``spec.resourceClaims``
   and ``nodeSelector: {hami.io/operating-mode: dra}``; another vendor's request in a DRA-mode pod,
   a ``gpumem-percentage`` other than 100 or an unsafe type/UUID annotation → denied;
9. with DRA mode on, a pod asking no managed device whose ResourceClaims (native claims or
   templates) ask hami's DeviceClasses (``hami_claims``, read by the server) gets the steering
   marker on the first container using one and hami's ``schedulerName``, so hami's extender
   filters it (namespace device quota) like a converted pod.

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
from hami.devices.nvidia import NvidiaBackend
from hami.devices.registry import BackendRegistry, default_registry
from hami.protocol import keys
from hami.protocol.enforcement import disables_control, disables_core_limit
from hami.webhook.dra import DraPolicy, claim_request, claim_template, wants_dra

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
    #: DRA mode (None: off, every pod stays in device-plugin mode)
    dra: DraPolicy | None = None

    @classmethod
    def from_config(
        cls,
        config: DeviceConfig,
        *,
        force_overwrite_default_scheduler: bool = True,
        registry: BackendRegistry | None = None,
        dra: DraPolicy | None = None,
    ) -> WebhookPolicy:
        return cls(
            registry=registry if registry is not None else default_registry(config),
            scheduler_name=config.hami.scheduler_name,
            force_overwrite_default_scheduler=force_overwrite_default_scheduler,
            enforcement_opt_out_namespaces=frozenset(config.hami.enforcement_opt_out_namespaces),
            dra=dra,
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
    #: objects the server creates before answering (DRA mode: ResourceClaimTemplates); an
    #: object that already exists is fine, any other failure denies the pod
    objects: tuple[dict[str, Any], ...] = ()

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

    def remove_resource(self, name: str) -> None:
        """Drop ``name`` from the container's limits and requests (as patched so far)."""
        resources = self.c.get("resources")
        if not isinstance(resources, dict):
            return
        for part in ("limits", "requests"):
            values = resources.get(part)
            if isinstance(values, dict) and name in values:
                del values[name]
                self.ops.append(
                    {"op": "remove", "path": f"{self.base}/resources/{part}/{escape_pointer(name)}"}
                )

    def add_claim(self, claim: str) -> None:
        """Reference the pod-level resource claim ``claim`` from this container."""
        resources = self.c.setdefault("resources", {})
        if not isinstance(resources, dict) or not isinstance(resources.get("claims", []), list):
            raise ValueError(f"container {self.name!r}: resources.claims must be a list")
        if "claims" not in resources:
            resources["claims"] = []
            self.ops.append({"op": "add", "path": f"{self.base}/resources/claims", "value": []})
        resources["claims"].append({"name": claim})
        self.ops.append({"op": "add", "path": f"{self.base}/resources/claims/-", "value": {"name": claim}})

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
    hami_claims: frozenset[str] = frozenset(),
) -> AdmissionDecision:
    """Decide on one Pod CREATE. ``namespace`` is ``AdmissionRequest.namespace`` (the pod's own
    ``metadata.namespace`` is often empty on CREATE); ``namespace_labels`` None means unknown.
    ``hami_claims`` names the pod's ``spec.resourceClaims`` entries that ask hami's DRA device
    classes (:func:`hami.webhook.claimrefs.hami_claim_refs`; rule 9)."""
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
    out = AdmissionOutcome(
        opted_out=opted_out,
        invalid=invalid,
        denials=denials,
        warnings=warnings,
        pod_annotations=_annotations(pod),
    )

    managed = False
    privileged: list[str] = []
    used: set[str] = set()
    vendor_requests: dict[str, list[DeviceRequest]] = {}
    edits: list[tuple[str, _ContainerEdit, dict[str, DeviceRequest]]] = []
    all_edits: list[_ContainerEdit] = []
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
        for vendor, req in requests.items():
            vendor_requests.setdefault(vendor, []).append(req)

        edit = _ContainerEdit(f"/spec/{field_name}/{index}", container, cname, ops)
        all_edits.append(edit)
        for vendor, admission in admissions:
            admission.admit_container(requests.get(vendor), edit, out)
        if requests:
            claim = f"hami-gpu-{'init-' if field_name == 'initContainers' else ''}{index}"
            edits.append((claim, edit, requests))

    annotation_defaults: dict[str, str] = {}
    for vendor, pod_admission in policy.registry.pod_admissions():
        if vendor in used:
            annotation_defaults.update(
                pod_admission.admit_annotations(_annotations(pod), vendor_requests[vendor], out)
            )

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

    templates: list[dict[str, Any]] = []
    if managed and policy.dra is not None:
        try:
            to_dra = wants_dra(_annotations(pod), namespace_labels, policy.dra)
            if to_dra:
                templates = _convert_to_dra(
                    spec, edits, ops, namespace or "default", _annotations(pod), policy
                )
        except (ValueError, RequestError) as exc:
            return AdmissionDecision.deny([str(exc)], code=400)

    if not managed and policy.dra is not None and hami_claims:
        _steer_native_claims(all_edits, hami_claims)
        managed = True

    if managed:
        if scheduler != policy.scheduler_name:
            op = "replace" if "schedulerName" in spec else "add"
            ops.append({"op": op, "path": "/spec/schedulerName", "value": policy.scheduler_name})
        for vendor, admission in admissions:
            ops += admission.admit_pod(spec, vendor in used)
        ops += _annotation_ops(pod, annotation_defaults)

    return AdmissionDecision(
        allowed=True,
        patch=tuple(ops),
        managed=managed,
        reason="mutated" if ops else "unchanged",
        warnings=tuple(warnings),
        objects=tuple(templates),
    )


def _steer_native_claims(edits: Sequence[_ContainerEdit], hami_claims: frozenset[str]) -> None:
    """Rule 9: the steering marker on the first container that uses one of ``hami_claims`` (the
    first app container when none names them), unless a container already carries it."""
    if any(e.has_resource(keys.DRA_STEER_RESOURCE) for e in edits):
        return
    target = next((e for e in edits if _claim_names(e.original) & hami_claims), None)
    if target is None:
        target = next(e for e in edits if e.base.startswith("/spec/containers/"))
    target.set_limit(keys.DRA_STEER_RESOURCE, "1")


def _claim_names(container: Mapping[str, Any]) -> set[str]:
    resources = container.get("resources")
    claims = resources.get("claims") if isinstance(resources, Mapping) else None
    return {c["name"] for c in claims or [] if isinstance(c, Mapping) and isinstance(c.get("name"), str)}


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def _annotation_ops(pod: Mapping[str, Any], values: Mapping[str, str]) -> list[JsonPatchOp]:
    """JSON-patch ops setting pod annotations (creating ``metadata.annotations`` when absent)."""
    if not values:
        return []
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("annotations"), Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(values)}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{escape_pointer(k)}", "value": v}
        for k, v in values.items()
    ]


def _convert_to_dra(
    spec: Mapping[str, Any],
    edits: Sequence[tuple[str, _ContainerEdit, dict[str, DeviceRequest]]],
    ops: list[JsonPatchOp],
    namespace: str,
    annotations: Mapping[str, Any],
    policy: WebhookPolicy,
) -> list[dict[str, Any]]:
    """Rule 8: the JSON-patch edits (appended to ``ops``) and the templates to create.

    Raises RequestError / ValueError naming the container and resource that cannot be converted."""
    assert policy.dra is not None
    backend = next((b for b in policy.registry if b.vendor == keys.VENDOR_NVIDIA), None)
    if not isinstance(backend, NvidiaBackend):
        raise ValueError("pod: DRA mode serves NVIDIA requests, and the NVIDIA backend is not enabled")
    templates: dict[str, dict[str, Any]] = {}
    claims: list[dict[str, str]] = []
    marked = False
    for claim, edit, requests in edits:
        others = sorted(v for v in requests if v != keys.VENDOR_NVIDIA)
        if others:
            raise RequestError(
                container=edit.name,
                resource=", ".join(others),
                reason=f"DRA mode serves NVIDIA GPUs only; run this pod in device-plugin mode "
                f"({keys.OPERATING_MODE}: {keys.OPERATING_MODE_DEVICE_PLUGIN})",
            )
        request = claim_request(
            requests[keys.VENDOR_NVIDIA],
            container=edit.name,
            annotations=annotations,
            percentage_resource=backend.config.resource_memory_percentage_name,
            device_class=policy.dra.device_class,
        )
        template = claim_template(namespace, request)
        name = template["metadata"]["name"]
        templates[name] = template
        for resource in backend.resource_names:
            edit.remove_resource(resource)
        edit.add_claim(claim)
        if not marked:
            edit.set_limit(keys.DRA_STEER_RESOURCE, "1")
            marked = True
        claims.append({"name": claim, "resourceClaimTemplateName": name})
    if not claims:
        return []
    existing = spec.get("resourceClaims")
    if existing is None:
        ops.append({"op": "add", "path": "/spec/resourceClaims", "value": claims})
    elif isinstance(existing, list):
        taken = {c.get("name") for c in existing if isinstance(c, Mapping)}
        for c in claims:
            if c["name"] in taken:
                raise ValueError(
                    f"pod: spec.resourceClaims: the name {c['name']!r} is reserved for hami's DRA claims"
                )
            ops.append({"op": "add", "path": "/spec/resourceClaims/-", "value": c})
    else:
        raise ValueError("pod: spec.resourceClaims must be a list")
    selector = spec.get("nodeSelector")
    if isinstance(selector, Mapping):
        current = selector.get(keys.OPERATING_MODE)
        if current not in (None, keys.OPERATING_MODE_DRA):
            raise ValueError(
                f"pod: spec.nodeSelector[{keys.OPERATING_MODE}]: {current!r} contradicts DRA mode"
            )
        ops.append(
            {
                "op": "add",
                "path": f"/spec/nodeSelector/{escape_pointer(keys.OPERATING_MODE)}",
                "value": keys.OPERATING_MODE_DRA,
            }
        )
    else:
        ops.append(
            {
                "op": "add",
                "path": "/spec/nodeSelector",
                "value": {keys.OPERATING_MODE: keys.OPERATING_MODE_DRA},
            }
        )
    return list(templates.values())
