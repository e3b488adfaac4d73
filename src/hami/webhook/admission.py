"""AdmissionReview envelopes (``admission.k8s.io/v1`` and ``v1beta1``): parse a request, build a response.

Pure. :func:`parse_review` raises :class:`ReviewError` when the envelope itself is unusable (the
server answers HTTP 400 with its message); a usable envelope whose pod is malformed is answered
with a normal AdmissionResponse that denies it, so the user sees why.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hami.webhook.mutate import AdmissionDecision

__all__ = [
    "API_VERSIONS",
    "AdmissionRequest",
    "ReviewError",
    "encode_patch",
    "parse_review",
    "review_response",
]

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class ReviewError(ValueError):
    """The body is not an AdmissionReview we can answer."""


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The parts of ``AdmissionReview.request`` the webhook uses."""

    api_version: str
    uid: str
    kind: str
    operation: str
    namespace: str
    name: str
    object: Any
    dry_run: bool


def parse_review(body: bytes) -> AdmissionRequest:
    """Decode and check an AdmissionReview body; raises :class:`ReviewError` naming what is wrong."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not JSON: {exc}") from None
    if not isinstance(review, dict):
        raise ReviewError(f"body must be a JSON object (an AdmissionReview), not {type(review).__name__}")
    api_version = review.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise ReviewError(f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {api_version!r}")
    if review.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind must be 'AdmissionReview', not {review.get('kind')!r}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request is missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing or not a non-empty string")
    kind = request.get("kind")
    kind_name = kind.get("kind") if isinstance(kind, Mapping) else None
    namespace = request.get("namespace")
    name = request.get("name")
    return AdmissionRequest(
        api_version=api_version,
        uid=uid,
        kind=kind_name if isinstance(kind_name, str) else "",
        operation=str(request.get("operation") or ""),
        namespace=namespace if isinstance(namespace, str) else "",
        name=name if isinstance(name, str) else "",
        object=request.get("object"),
        dry_run=request.get("dryRun") is True,
    )


def encode_patch(ops: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """base64 of the JSON patch, as ``AdmissionResponse.patch`` carries it."""
    return base64.b64encode(orjson.dumps(list(ops))).decode("ascii")


def review_response(request: AdmissionRequest, decision: AdmissionDecision) -> dict[str, Any]:
    """The AdmissionReview to send back: same apiVersion and kind, uid echoed."""
    response: dict[str, Any] = {"uid": request.uid, "allowed": decision.allowed}
    if decision.allowed:
        if decision.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = encode_patch(decision.patch)
    else:
        response["status"] = {
            "status": "Failure",
            "code": decision.code,
            "reason": "BadRequest" if decision.code == 400 else "Forbidden",
            "message": decision.message,
        }
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {"apiVersion": request.api_version, "kind": "AdmissionReview", "response": response}
