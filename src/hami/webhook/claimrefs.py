"""Which of a pod's ResourceClaims ask for hami's DRA devices (native claims, not the webhook's own).

A pod references claims by ``spec.resourceClaims[]``: ``resourceClaimName`` (an existing claim) or
``resourceClaimTemplateName`` (a claim made per pod from the template). :func:`hami_claim_refs`
reads each referenced object through a getter and returns the names of the references whose
requests name one of hami's DeviceClasses (``exactly.deviceClassName`` or a ``firstAvailable``
alternative), so the webhook can steer such a pod through hami's extender, which applies the
namespace's device quota to it as to a device-plugin pod.

Guarantees: never raises for what it reads — a reference whose object is missing, unreadable or
malformed is logged and left out (the pod is then placed by kube-scheduler alone, as without
hami); one read per reference, none for a pod without ``spec.resourceClaims``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from hami.protocol import keys

log = logging.getLogger(__name__)

#: ``(resource plural, namespace, name) -> the object, or None when it does not exist``
ObjectGetter = Callable[[str, str, str], Awaitable[Mapping[str, Any] | None]]

#: appended (with ``||``) to the webhook registration's match condition in DRA mode, so pods with
#: ResourceClaims reach the webhook (the chart renders the same text with ``dra.enabled``)
MATCH_CONDITION = "(has(object.spec.resourceClaims) && size(object.spec.resourceClaims) > 0)"

#: hami's DeviceClasses: whole cards and shares, MIG devices
HAMI_CLASSES = frozenset({keys.DRA_DEVICE_CLASS, keys.DRA_MIG_DEVICE_CLASS})


def requested_classes(devices: Any) -> set[str]:
    """The DeviceClass names a claim spec's ``devices`` asks for (empty for anything malformed)."""
    requests = devices.get("requests") if isinstance(devices, Mapping) else None
    out: set[str] = set()
    for r in requests if isinstance(requests, list) else []:
        if not isinstance(r, Mapping):
            continue
        alternatives: Iterable[Any] = [r.get("exactly")]
        first = r.get("firstAvailable")
        if isinstance(first, list):
            alternatives = [*alternatives, *first]
        for a in alternatives:
            if isinstance(a, Mapping) and isinstance(a.get("deviceClassName"), str):
                out.add(a["deviceClassName"])
    return out


def _claim_devices(obj: Mapping[str, Any], template: bool) -> Any:
    spec = obj.get("spec")
    if template:
        spec = spec.get("spec") if isinstance(spec, Mapping) else None
    return spec.get("devices") if isinstance(spec, Mapping) else None


async def hami_claim_refs(
    pod: Mapping[str, Any], namespace: str, get: ObjectGetter, classes: frozenset[str] = HAMI_CLASSES
) -> frozenset[str]:
    """Names of the pod's ``spec.resourceClaims`` entries whose claim or template asks ``classes``."""
    spec = pod.get("spec")
    refs = spec.get("resourceClaims") if isinstance(spec, Mapping) else None
    out: set[str] = set()
    for ref in refs if isinstance(refs, list) else []:
        if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
            continue
        template = ref.get("resourceClaimTemplateName")
        claim = ref.get("resourceClaimName")
        plural, name = ("resourceclaimtemplates", template) if template else ("resourceclaims", claim)
        if not isinstance(name, str) or not name:
            continue
        try:
            obj = await get(plural, namespace, name)
        except Exception as exc:
            log.warning(
                "webhook: reading %s %s/%s for pod claim %r failed: %s",
                plural,
                namespace,
                name,
                ref["name"],
                exc,
            )
            continue
        if obj is not None and requested_classes(_claim_devices(obj, bool(template))) & classes:
            out.add(ref["name"])
    return frozenset(out)
