"""Type checks of the Pod and Node fields hami reads, for objects that come from outside.

:mod:`hami.protocol.bodies` readers trust their input (an API server never sends a list where a
mapping belongs). Where an object comes from a request body (the extender's ``ExtenderArgs``, an
``AdmissionReview``), a file (``hami simulate``) or anything else hami did not produce, check it
here first: :func:`check_pod` and :func:`check_node` raise :class:`ProtocolError` naming the first
field of the wrong type (``spec.containers[1].resources.limits: must be an object, got 'x'``).

Only types are checked, and only of the fields hami reads; values (quantities, annotation
encodings) are the codecs' business. A missing or ``null`` field is always accepted (the readers
treat it as empty). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hami.protocol.errors import ProtocolError

__all__ = ["check_node", "check_pod"]

_META_STRINGS = ("name", "generateName", "namespace", "uid", "resourceVersion", "deletionTimestamp")
_SPEC_STRINGS = ("nodeName", "schedulerName", "priorityClassName", "runtimeClassName")
_CONTAINER_STRINGS = ("name", "image", "restartPolicy")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 64 else f"{text[:60]}...{text[-1]}"


def _fail(path: str, what: str, value: object) -> ProtocolError:
    return ProtocolError(f"{path}: must be {what}, got {_show(value)}")


def _object(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """``parent[key]`` when it is an object; ``{}`` when missing or null; raises otherwise."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, "an object", value)
    return value


def _list(parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, "a list", value)
    return value


def _strings(parent: Mapping[str, Any], keys: tuple[str, ...], path: str) -> None:
    for key in keys:
        value = parent.get(key)
        if value is not None and not isinstance(value, str):
            raise _fail(f"{path}.{key}", "a string", value)


def _string_map(parent: Mapping[str, Any], key: str, path: str) -> None:
    for k, v in _object(parent, key, f"{path}.{key}").items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _fail(f"{path}.{key}[{_show(k)}]", "a string", v)


def _metadata(obj: Mapping[str, Any], path: str) -> None:
    meta = _object(obj, "metadata", f"{path}metadata")
    _strings(meta, _META_STRINGS, f"{path}metadata")
    _string_map(meta, "annotations", f"{path}metadata")
    _string_map(meta, "labels", f"{path}metadata")


def _container(c: Any, path: str) -> None:
    if not isinstance(c, Mapping):
        raise _fail(path, "an object", c)
    _strings(c, _CONTAINER_STRINGS, path)
    resources = _object(c, "resources", f"{path}.resources")
    for part in ("limits", "requests"):
        for k in _object(resources, part, f"{path}.resources.{part}"):
            if not isinstance(k, str):
                raise _fail(f"{path}.resources.{part}", "keyed by resource names", k)
    for i, env in enumerate(_list(c, "env", f"{path}.env")):
        if not isinstance(env, Mapping):
            raise _fail(f"{path}.env[{i}]", "an object", env)
        _strings(env, ("name", "value"), f"{path}.env[{i}]")


def _statuses(status: Mapping[str, Any], key: str) -> None:
    for i, s in enumerate(_list(status, key, f"status.{key}")):
        path = f"status.{key}[{i}]"
        if not isinstance(s, Mapping):
            raise _fail(path, "an object", s)
        _strings(s, ("name",), path)
        state = _object(s, "state", f"{path}.state")
        for part in ("waiting", "running", "terminated"):
            _object(state, part, f"{path}.state.{part}")


def check_pod(pod: object) -> None:
    """Raise :class:`ProtocolError` naming the first field of ``pod`` hami reads that has the wrong type."""
    if not isinstance(pod, Mapping):
        raise _fail("pod", "an object", pod)
    _metadata(pod, "")
    spec = _object(pod, "spec", "spec")
    _strings(spec, _SPEC_STRINGS, "spec")
    for key in ("initContainers", "containers"):
        for i, c in enumerate(_list(spec, key, f"spec.{key}")):
            _container(c, f"spec.{key}[{i}]")
    status = _object(pod, "status", "status")
    _strings(status, ("phase",), "status")
    _statuses(status, "initContainerStatuses")
    _statuses(status, "containerStatuses")


def check_node(node: object) -> None:
    """Raise :class:`ProtocolError` naming the first field of ``node`` hami reads that has the wrong type."""
    if not isinstance(node, Mapping):
        raise _fail("node", "an object", node)
    _metadata(node, "")
    status = _object(node, "status", "status")
    for key in ("capacity", "allocatable"):
        for k, v in _object(status, key, f"status.{key}").items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, str | int | float):
                raise _fail(f"status.{key}[{_show(k)}]", "a quantity", v)
