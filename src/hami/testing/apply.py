"""Server-side apply of raw manifests (what ``kubectl apply --server-side`` does), and
SubjectAccessReviews, against a real API server.

:class:`Applier` finds each kind's REST path through the API server's discovery documents (so a
CustomResourceDefinition created a moment ago is found too), then PATCHes the object with
``application/apply-patch+yaml``. The API server validates the object exactly as on create or
update and runs admission; with ``dry_run`` it stops before storing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies

__all__ = ["APPLY_PATCH", "Applier", "ResourceInfo", "can_i", "service_account_user"]

APPLY_PATCH = "application/apply-patch+yaml"

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceInfo:
    """Where objects of one kind live: the plural resource name and whether it is namespaced."""

    plural: str
    namespaced: bool


class Applier:
    """Applies objects with one field manager; discovery answers are cached per group/version."""

    def __init__(self, client: KubeClient, *, field_manager: str = "hami-test") -> None:
        self.client = client
        self.field_manager = field_manager
        self._discovery: dict[str, dict[str, ResourceInfo]] = {}

    async def resource(self, api_version: str, kind: str, *, refresh: bool = False) -> ResourceInfo:
        """The plural and scope of ``kind`` in ``api_version``; raises NotFoundError if unserved."""
        if refresh or api_version not in self._discovery:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            doc = await self.client.get(path)
            self._discovery[api_version] = {
                r["kind"]: ResourceInfo(r["name"], bool(r["namespaced"]))
                for r in doc.get("resources") or []
                if "/" not in r["name"]
            }
        try:
            return self._discovery[api_version][kind]
        except KeyError:
            raise NotFoundError(404, "NotFound", f"{kind} is not served by {api_version}") from None

    async def path(self, obj: Obj) -> str:
        """The REST path of ``obj`` (its namespace is required when the kind is namespaced)."""
        info = await self.resource(obj["apiVersion"], obj["kind"])
        meta = bodies.meta(obj)
        ns = meta.get("namespace") if info.namespaced else None
        if info.namespaced and not ns:
            raise ValueError(f"{obj['kind']} {meta.get('name')!r} is namespaced but has no namespace")
        return api_path(obj["apiVersion"], info.plural, namespace=ns, name=meta["name"])

    async def apply(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Server-side apply ``obj`` (forcing ownership of conflicting fields); returns the result."""
        params: dict[str, str | bool] = {"fieldManager": self.field_manager, "force": True}
        if dry_run:
            params["dryRun"] = "All"
        return await self.client.patch(await self.path(obj), obj, content_type=APPLY_PATCH, params=params)


def service_account_user(namespace: str, name: str) -> tuple[str, list[str]]:
    """The user name and groups the API server gives a ServiceAccount token."""
    return (
        f"system:serviceaccount:{namespace}:{name}",
        ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
    )


async def can_i(
    client: KubeClient,
    user: str,
    groups: list[str],
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> bool:
    """Ask the API server's authorizer (a SubjectAccessReview) whether ``user`` may do this."""
    attrs: dict[str, str] = {"verb": verb, "group": group, "resource": resource}
    if namespace:
        attrs["namespace"] = namespace
    if name:
        attrs["name"] = name
    if subresource:
        attrs["subresource"] = subresource
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": attrs},
    }
    out = await client.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(bodies.status(out).get("allowed"))
