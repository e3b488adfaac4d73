"""DRA mode of the webhook: HAMi-style GPU requests turned into a ResourceClaimTemplate reference.

Pure: no I/O. :func:`wants_dra` says whether a pod's HAMi requests are served by DRA;
:func:`claim_request` turns one container's NVIDIA request plus the pod's type/UUID annotations into
a ResourceClaim ``exactly`` request; :func:`claim_template` wraps it in a ResourceClaimTemplate whose
name is a hash of its content.

Rules:

* **Which pods.** With DRA mode on (``DraPolicy``), a pod's mode is its annotation
  ``hami.io/operating-mode``, else its namespace's label of that key, else the policy's
  ``default_mode``; only ``dra`` converts. Unconverted pods keep ``nvidia.com/gpu``, which DRA-mode
  nodes do not advertise, so kube-scheduler keeps them off those nodes.
* **Kept off device-plugin nodes.** A converted pod gets ``nodeSelector: {hami.io/operating-mode:
  dra}``, the label the DRA kubelet plugin's nodes carry.
* **The request.** ``count`` = ``nvidia.com/gpu``; ``capacity.requests.memory`` = ``gpumem`` in
  ``Mi`` (omitted for a whole card, i.e. no memory request or ``gpumem-percentage: 100``: the
  device's whole memory is consumed); ``capacity.requests.cores`` = ``gpucores`` (``0`` when not
  given, HAMi's default; explicit, so the claim means the same on a device without a request
  policy, where a request naming no cores would consume them all). Any other
  ``gpumem-percentage`` is refused: DRA capacity requests are absolute and the card (its memory) is
  not known before allocation; the message names the resource and says to use ``gpumem``.
* **Selectors.** ``nvidia.com/use-gputype`` / ``nouse-gputype`` become CEL on ``productName``
  (case-insensitive substring, HAMi's rule); ``use-gpuuuid`` / ``nouse-gpuuuid`` CEL on ``uuid``
  (exact). Values are restricted to a safe character set, so the CEL text is never injectable.
* **Names.** A template is named ``hami-gpu-<sha256 of its spec>[:16]``: pods asking the same thing
  share it, creating it again is a no-op (409 means done), and a template left behind by a pod that
  was then refused holds no device (claims, not templates, allocate).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hami.devices.base import DeviceRequest, RequestError
from hami.protocol import keys
from hami.protocol.dra import RESOURCE_API

__all__ = [
    "DraPolicy",
    "claim_request",
    "claim_template",
    "selector_expressions",
    "wants_dra",
]

#: one request per claim, named so in the claim and its status
REQUEST_NAME = "gpu"
_MODES = (keys.OPERATING_MODE_DEVICE_PLUGIN, keys.OPERATING_MODE_DRA)
# GPU product names and UUIDs ("NVIDIA A100-SXM4-40GB", "GPU-0f3c…", "MIG-…"): nothing that could
# close a CEL string literal
_SAFE_VALUE = re.compile(r"[A-Za-z0-9 ._:/+()\-]{1,128}")


@dataclass(frozen=True, slots=True)
class DraPolicy:
    """DRA mode of the webhook: on when the :class:`~hami.webhook.mutate.WebhookPolicy` carries one.

    ``default_mode`` is the mode of a pod whose annotation and namespace label say nothing.
    """

    default_mode: str = keys.OPERATING_MODE_DEVICE_PLUGIN
    device_class: str = keys.DRA_DEVICE_CLASS

    def __post_init__(self) -> None:
        if self.default_mode not in _MODES:
            raise ValueError(
                f"dra default mode must be one of {', '.join(_MODES)}, not {self.default_mode!r}"
            )


def wants_dra(
    pod_annotations: Mapping[str, Any], namespace_labels: Mapping[str, Any] | None, policy: DraPolicy
) -> bool:
    """Whether the pod's HAMi requests are served by DRA; raises ValueError naming a bad annotation.

    A namespace label with an unknown value is ignored (the tenant cannot fix it); a pod
    annotation with one is the pod's error."""
    value = pod_annotations.get(keys.OPERATING_MODE)
    if value is not None:
        if value not in _MODES:
            raise ValueError(
                f"pod: metadata.annotations[{keys.OPERATING_MODE}]: {value!r} is not one of {', '.join(_MODES)}"
            )
        return bool(value == keys.OPERATING_MODE_DRA)
    label = (namespace_labels or {}).get(keys.OPERATING_MODE)
    if label in _MODES:
        return bool(label == keys.OPERATING_MODE_DRA)
    return policy.default_mode == keys.OPERATING_MODE_DRA


def _values(annotations: Mapping[str, Any], key: str) -> tuple[str, ...]:
    raw = annotations.get(key)
    if not isinstance(raw, str):
        return ()
    out = tuple(v.strip() for v in raw.split(",") if v.strip())
    for v in out:
        if not _SAFE_VALUE.fullmatch(v):
            raise RequestError(
                container="pod",
                resource=f"metadata.annotations[{key}]",
                reason=f"{v!r} has characters a GPU type or UUID does not have (letters, digits, ' ._:/+()-')",
            )
    return out


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(orjson.dumps(v).decode() for v in values) + "]"


def selector_expressions(annotations: Mapping[str, Any], driver: str = keys.DRA_DRIVER) -> list[str]:
    """CEL expressions for the pod's type and UUID annotations (AND-ed by the claim); raises RequestError."""
    attrs = f"device.attributes[{orjson.dumps(driver).decode()}]"
    product = f"{attrs}.{keys.DRA_ATTR_PRODUCT_NAME}.lowerAscii()"
    out: list[str] = []
    use_types = _values(annotations, keys.NVIDIA_USE_GPUTYPE)
    if use_types:
        out.append(" || ".join(f"{product}.contains({orjson.dumps(t.lower()).decode()})" for t in use_types))
    nouse_types = _values(annotations, keys.NVIDIA_NOUSE_GPUTYPE)
    if nouse_types:
        out.append(
            "!("
            + " || ".join(f"{product}.contains({orjson.dumps(t.lower()).decode()})" for t in nouse_types)
            + ")"
        )
    use_uuids = _values(annotations, keys.NVIDIA_USE_GPUUUID)
    if use_uuids:
        out.append(f"{attrs}.{keys.DRA_ATTR_UUID} in {_cel_list(use_uuids)}")
    nouse_uuids = _values(annotations, keys.NVIDIA_NOUSE_GPUUUID)
    if nouse_uuids:
        out.append(f"!({attrs}.{keys.DRA_ATTR_UUID} in {_cel_list(nouse_uuids)})")
    return out


def claim_request(
    request: DeviceRequest,
    *,
    container: str,
    annotations: Mapping[str, Any],
    percentage_resource: str,
    device_class: str = keys.DRA_DEVICE_CLASS,
) -> dict[str, Any]:
    """One container's request as a ResourceClaim ``DeviceRequest`` (``exactly``); raises RequestError
    naming the container and resource (``percentage_resource``: the memory-percentage resource name)."""
    capacity: dict[str, str] = {keys.DRA_CAPACITY_CORES: str(request.cores)}
    if request.mem_percentage is not None and request.mem_percentage != 100:
        raise RequestError(
            container=container,
            resource=percentage_resource,
            reason=(
                f"{request.mem_percentage} percent cannot be served in DRA mode: a DRA claim asks for an "
                "absolute amount before the card is known; ask for nvidia.com/gpumem in MiB, or run the pod "
                f"in device-plugin mode ({keys.OPERATING_MODE}: {keys.OPERATING_MODE_DEVICE_PLUGIN})"
            ),
        )
    if request.mem_percentage is None and request.mem > 0:
        capacity[keys.DRA_CAPACITY_MEMORY] = f"{request.mem}Mi"
    exactly: dict[str, Any] = {
        "deviceClassName": device_class,
        "allocationMode": "ExactCount",
        "count": request.count,
        "capacity": {"requests": capacity},
    }
    selectors = selector_expressions(annotations)
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    return {"name": REQUEST_NAME, "exactly": exactly}


def claim_template(namespace: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The ResourceClaimTemplate holding one claim with ``request``, named by its content."""
    spec = {"spec": {"devices": {"requests": [dict(request)]}}}
    digest = hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return {
        "apiVersion": RESOURCE_API,
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": f"hami-gpu-{digest}",
            "namespace": namespace,
            "labels": {keys.DRA_TEMPLATE_LABEL: "true", "app.kubernetes.io/managed-by": "hami"},
        },
        "spec": spec,
    }
