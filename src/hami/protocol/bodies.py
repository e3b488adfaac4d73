"""One vocabulary for raw API objects: TypedDicts for their shapes, small pure readers for their fields.

hami keeps Kubernetes objects as the plain dicts the API server sends (no model classes on the hot
path). This module names their shapes and gives each commonly read field one reader, in the spirit
of kopf's ``bodies``. It lives beside the other wire formats, not in :mod:`hami.kube`, because the
pure core (scheduling, device backends, admission logic) reads these objects too and must not
import the API client::

    from hami.protocol import bodies

    ann = bodies.annotations(pod)                    # {} when metadata or annotations is missing/null
    if bodies.node_name(pod) == node and not bodies.is_deleting(pod):
        for kind, ctr in bodies.all_containers(pod):  # ("init" | "sidecar" | "app", container)
            ...
    log.info("pod %s", bodies.pod_key(pod))            # "namespace/name"

Guarantees:

* **Tolerant exactly like ``(obj.get("metadata") or {}).get(...)``.** A missing, ``null`` or
  empty level reads as empty and a missing field as its documented default; nothing raises on
  such objects. A level that holds a value of the wrong type (a list where a mapping belongs) is
  *not* checked — these readers are for objects the API server produced, not for validating
  user-written manifests (:mod:`hami.manifests` and the webhook validate those).
* **No copying, no allocation beyond a fresh ``{}`` / ``[]`` for a missing level.** What a reader
  returns is the object's own dict or list (or a new empty one): treat it as read-only, like
  objects from an :class:`~hami.kube.informer.Informer` cache. A write meant to reach the object
  must go through the object itself (``obj.setdefault("metadata", {})``), never through a
  reader's result, which may be a throwaway empty dict.
* **Plain functions**, cheap enough for the extender's filter loop: one or two ``dict.get`` calls
  each, no ``isinstance`` checks, no conversion of values (a field is returned as stored, which
  for anything the API server sends is the JSON type the TypedDicts below declare).
* **Typed** for ``mypy --strict``: readers accept any ``Mapping[str, Any]`` (so both a plain
  ``dict[str, Any]`` and the TypedDicts here) and return the TypedDict of the level they read.

The TypedDicts are ``total=False`` and list only the fields hami reads or writes; the API sends
more. They describe shapes for type checking only: nothing validates an object against them.

Import the module, not its functions (``bodies.name(pod)``): the short names would shadow the
local variables they fill (``name = bodies.name(pod)``) and ``annotations`` clashes with
``from __future__ import annotations``.
"""

# No ``from __future__ import annotations`` here: it would bind the name ``annotations`` that the
# reader below takes. Every annotation in this module is valid at runtime on Python 3.11.
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypedDict

__all__ = [
    "Body",
    "Condition",
    "Container",
    "ContainerKind",
    "ContainerState",
    "ContainerStatus",
    "EnvVar",
    "ListMeta",
    "Node",
    "NodeSpec",
    "NodeStatus",
    "ObjectList",
    "ObjectMeta",
    "OwnerReference",
    "Pod",
    "PodSpec",
    "PodStatus",
    "ResourceRequirements",
    "all_containers",
    "allocatable",
    "annotations",
    "app_containers",
    "conditions",
    "container_statuses",
    "init_container_statuses",
    "init_containers",
    "is_deleting",
    "is_sidecar",
    "labels",
    "list_meta",
    "meta",
    "name",
    "namespace",
    "node_name",
    "object_key",
    "phase",
    "pod_containers",
    "pod_key",
    "resource_version",
    "spec",
    "status",
    "uid",
]

#: Any raw API object as a reader accepts it: a dict from the API server, a TypedDict below.
Body = Mapping[str, Any]


# --- shapes ----------------------------------------------------------------------------------


class _Kinded(TypedDict, total=False):
    """``apiVersion`` and ``kind``: set on objects read one by one, absent on LIST items."""

    apiVersion: str
    kind: str


class OwnerReference(_Kinded, total=False):
    """One entry of ``metadata.ownerReferences`` (a ReplicaSet owning a pod, …)."""

    name: str
    uid: str
    controller: bool


class ObjectMeta(TypedDict, total=False):
    """``metadata`` of any object. ``namespace`` is absent on cluster-scoped objects."""

    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    finalizers: list[str]


#: ``metadata`` of a list response (``continue`` is a Python keyword, hence the call syntax).
ListMeta = TypedDict(
    "ListMeta", {"resourceVersion": str, "continue": str, "remainingItemCount": int}, total=False
)


class ObjectList(_Kinded, total=False):
    """A LIST response (``PodList``, ``NodeList``, …): its items carry no ``kind`` of their own."""

    metadata: ListMeta
    items: list[dict[str, Any]]


class EnvVar(TypedDict, total=False):
    name: str
    value: str
    valueFrom: dict[str, Any]


class ResourceRequirements(TypedDict, total=False):
    """Quantities as sent: strings (``"8000"``, ``"1Gi"``) or, in hand-written objects, numbers."""

    limits: dict[str, str | int]
    requests: dict[str, str | int]


class Container(TypedDict, total=False):
    """One entry of ``spec.containers`` or ``spec.initContainers``."""

    name: str
    image: str
    command: list[str]
    env: list[EnvVar]
    resources: ResourceRequirements
    #: only on init containers: ``"Always"`` makes it a native sidecar (Kubernetes ≥ 1.28)
    restartPolicy: str


class PodSpec(TypedDict, total=False):
    nodeName: str
    schedulerName: str
    priorityClassName: str
    initContainers: list[Container]
    containers: list[Container]


class ContainerState(TypedDict, total=False):
    """Exactly one key is set: ``waiting``, ``running`` or ``terminated`` (with ``exitCode``)."""

    waiting: dict[str, Any]
    running: dict[str, Any]
    terminated: dict[str, Any]


class ContainerStatus(TypedDict, total=False):
    name: str
    ready: bool
    restartCount: int
    state: ContainerState


class Condition(TypedDict, total=False):
    """One entry of ``status.conditions`` (pods, nodes): ``status`` is ``"True"``, ``"False"`` or
    ``"Unknown"`` — a string."""

    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str


class PodStatus(TypedDict, total=False):
    phase: str
    reason: str
    conditions: list[Condition]
    initContainerStatuses: list[ContainerStatus]
    containerStatuses: list[ContainerStatus]


class Pod(_Kinded, total=False):
    """A core/v1 Pod as the API server sends it (read :func:`node_name`, :func:`phase`,
    :func:`all_containers`, … rather than indexing it by hand)."""

    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


class NodeSpec(TypedDict, total=False):
    unschedulable: bool
    taints: list[dict[str, Any]]


class NodeStatus(TypedDict, total=False):
    capacity: dict[str, str]
    allocatable: dict[str, str]
    conditions: list[Condition]


class Node(_Kinded, total=False):
    """A core/v1 Node; hami's device registration lives in its annotations."""

    metadata: ObjectMeta
    spec: NodeSpec
    status: NodeStatus


#: which list a container comes from: an init container that runs to completion, a native sidecar
#: (an init container with ``restartPolicy: Always``, running beside the app), or an app container
ContainerKind = Literal["init", "sidecar", "app"]


# --- metadata --------------------------------------------------------------------------------


def meta(obj: Body) -> ObjectMeta:
    """``obj.metadata``; a new ``{}`` when missing or null."""
    m = obj.get("metadata")
    return m if m else {}


def annotations(obj: Body) -> dict[str, str]:
    """``obj.metadata.annotations``; a new ``{}`` when any level is missing or null."""
    m = obj.get("metadata")
    a = m.get("annotations") if m else None
    return a if a else {}


def labels(obj: Body) -> dict[str, str]:
    """``obj.metadata.labels``; a new ``{}`` when any level is missing or null."""
    m = obj.get("metadata")
    lab = m.get("labels") if m else None
    return lab if lab else {}


def name(obj: Body) -> str:
    """``obj.metadata.name``; ``""`` when missing or null (every stored object has one)."""
    m = obj.get("metadata")
    n = m.get("name") if m else None
    return n if n else ""


def namespace(obj: Body) -> str | None:
    """``obj.metadata.namespace``; ``None`` when missing or null (a cluster-scoped object, or a
    manifest that leaves it to the request path) — what ``api_path`` takes for "no namespace"."""
    m = obj.get("metadata")
    return m.get("namespace") if m else None


def uid(obj: Body) -> str:
    """``obj.metadata.uid``; ``""`` when missing or null (only objects never stored lack one)."""
    m = obj.get("metadata")
    u = m.get("uid") if m else None
    return u if u else ""


def resource_version(obj: Body) -> str | None:
    """``obj.metadata.resourceVersion``; ``None`` when missing or null — which is also what the
    client's ``resource_version=`` parameters take for "no precondition"."""
    m = obj.get("metadata")
    return m.get("resourceVersion") if m else None


def is_deleting(obj: Body) -> bool:
    """Whether ``obj.metadata.deletionTimestamp`` is set (graceful deletion has begun)."""
    m = obj.get("metadata")
    return bool(m and m.get("deletionTimestamp"))


def list_meta(lst: Body) -> ListMeta:
    """``metadata`` of a LIST response (``resourceVersion``, ``continue``); a new ``{}`` when
    missing or null."""
    m = lst.get("metadata")
    return m if m else {}


def object_key(obj: Body) -> str:
    """Cache key ``namespace/name`` (or ``name`` for cluster-scoped objects), like client-go's
    ``MetaNamespaceKeyFunc``; the key :class:`~hami.kube.informer.Informer` caches under.

    >>> object_key({"metadata": {"namespace": "ns", "name": "p"}}), object_key({"metadata": {"name": "n"}})
    ('ns/p', 'n')
    """
    m = obj.get("metadata") or {}
    ns = m.get("namespace")
    n = m.get("name", "")
    return f"{ns}/{n}" if ns else str(n)


def pod_key(pod: Body) -> str:
    """``namespace/name`` of a pod, for messages and lookups: :func:`object_key` (every pod the API
    server returns has a namespace; a bare manifest without one gives just its name)."""
    return object_key(pod)


# --- spec / status ---------------------------------------------------------------------------


def spec(obj: Body) -> dict[str, Any]:
    """``obj.spec`` of any kind (pod, node, lease, …); a new ``{}`` when missing or null."""
    s = obj.get("spec")
    return s if s else {}


def status(obj: Body) -> dict[str, Any]:
    """``obj.status`` of any kind; a new ``{}`` when missing or null."""
    s = obj.get("status")
    return s if s else {}


def conditions(obj: Body) -> list[Condition]:
    """``obj.status.conditions`` (pods, nodes, …); a new ``[]`` when any level is missing or null."""
    s = obj.get("status")
    c = s.get("conditions") if s else None
    return c if c else []


def node_name(pod: Body) -> str | None:
    """``pod.spec.nodeName``: the node the pod is bound to; ``None`` when missing or null
    (unbound). Test it for truth, not against ``None``: the API never sends ``""``, manifests may."""
    s = pod.get("spec")
    return s.get("nodeName") if s else None


def phase(pod: Body) -> str:
    """``pod.status.phase``; ``"Pending"`` when not reported yet (status or phase missing or null)
    — the phase the API server gives a new pod."""
    s = pod.get("status")
    p = s.get("phase") if s else None
    return "Pending" if p is None else p


def allocatable(node: Body) -> dict[str, str]:
    """``node.status.allocatable`` (resource name → quantity string); a new ``{}`` when any level
    is missing or null."""
    s = node.get("status")
    a = s.get("allocatable") if s else None
    return a if a else {}


# --- containers ------------------------------------------------------------------------------


def init_containers(pod: Body) -> list[Container]:
    """``pod.spec.initContainers`` (native sidecars included); a new ``[]`` when missing or null."""
    s = pod.get("spec")
    c = s.get("initContainers") if s else None
    return c if c else []


def app_containers(pod: Body) -> list[Container]:
    """``pod.spec.containers``; a new ``[]`` when missing or null."""
    s = pod.get("spec")
    c = s.get("containers") if s else None
    return c if c else []


def is_sidecar(container: Mapping[str, Any]) -> bool:
    """An init container with ``restartPolicy: Always`` (a native sidecar): it starts in init
    order but keeps running beside the app containers. ``False`` for app containers, which carry
    no ``restartPolicy`` of their own."""
    return container.get("restartPolicy") == "Always"


def pod_containers(pod: Body) -> list[Container]:
    """Init containers (sidecars included) first, then app containers, in spec order: the order
    HAMi's per-container device annotations are indexed by. A new list."""
    return init_containers(pod) + app_containers(pod)


def all_containers(pod: Body) -> Iterator[tuple[ContainerKind, Container]]:
    """``(kind, container)`` for every container, in :func:`pod_containers` order, where ``kind``
    is ``"init"`` (runs to completion before the app starts), ``"sidecar"`` (a native sidecar) or
    ``"app"``. Entries are yielded as stored; one that is not a mapping (a malformed manifest, for
    the caller to reject) is never a sidecar and does not raise here."""
    for c in init_containers(pod):
        yield ("sidecar" if isinstance(c, Mapping) and c.get("restartPolicy") == "Always" else "init"), c
    for c in app_containers(pod):
        yield "app", c


def init_container_statuses(pod: Body) -> list[ContainerStatus]:
    """``pod.status.initContainerStatuses`` (sidecars included); a new ``[]`` when any level is
    missing or null. Match them to containers by ``name``: the kubelet does not promise order."""
    s = pod.get("status")
    c = s.get("initContainerStatuses") if s else None
    return c if c else []


def container_statuses(pod: Body) -> list[ContainerStatus]:
    """``pod.status.containerStatuses`` (app containers); a new ``[]`` when any level is missing
    or null."""
    s = pod.get("status")
    c = s.get("containerStatuses") if s else None
    return c if c else []
