"""REST paths for Kubernetes resources and cache keys (readers of raw objects: :mod:`hami.protocol.bodies`).

>>> api_path("v1", "pods", namespace="default", name="p", subresource="binding")
'/api/v1/namespaces/default/pods/p/binding'
>>> api_path("coordination.k8s.io/v1", "leases", namespace="kube-system")
'/apis/coordination.k8s.io/v1/namespaces/kube-system/leases'
>>> object_key({"metadata": {"namespace": "ns", "name": "p"}})
'ns/p'
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hami.protocol import bodies
from hami.protocol.bodies import object_key

__all__ = ["api_path", "object_key", "object_path", "split_key"]


def api_path(
    api_version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The path of a collection (``name=None``) or of one object.

    ``api_version`` is ``"v1"`` for the core group or ``"<group>/<version>"``.
    """
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace is not None:
        parts.append(f"/namespaces/{quote(namespace, safe='')}")
    parts.append(f"/{plural}")
    if name is not None:
        parts.append(f"/{quote(name, safe='')}")
        if subresource:
            parts.append(f"/{subresource}")
    elif subresource:
        raise ValueError("a subresource needs an object name")
    return "".join(parts)


def split_key(key: str) -> tuple[str | None, str]:
    """Inverse of :func:`object_key`: ``"ns/name"`` → ``("ns", "name")``, ``"n"`` → ``(None, "n")``."""
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


def object_path(api_version: str, plural: str, obj: dict[str, Any], subresource: str | None = None) -> str:
    """The path of ``obj`` itself, from its metadata (``KeyError`` without ``metadata.name``)."""
    meta = bodies.meta(obj)
    return api_path(
        api_version, plural, namespace=meta.get("namespace"), name=meta["name"], subresource=subresource
    )
