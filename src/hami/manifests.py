"""Reading Kubernetes manifests from YAML files: multi-document streams or ``kind: List``.

Errors name the file, the document number and the field, e.g.
``pods.yaml: document 3 (Pod default/train): spec.containers: must be a list``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hami.protocol.errors import ProtocolError
from hami.protocol.shape import check_node, check_pod


class ManifestError(ValueError):
    """A manifest file could not be read; the message names file, document and field."""


def _describe(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    assert isinstance(meta, dict)
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind', '?')} {ns + '/' if ns else ''}{name}"


def load_manifests(path: str | Path, *, kind: str) -> list[dict[str, Any]]:
    """All objects of ``kind`` in a YAML file; raises ManifestError on bad YAML or structure."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{p}: invalid YAML: {exc}") from None
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(_flatten(docs), start=1):
        where = f"{p}: document {i}"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: must be a mapping, got {type(doc).__name__}")
        if doc.get("kind") != kind:
            raise ManifestError(f"{where}: kind: expected {kind!r}, got {doc.get('kind')!r}")
        where = f"{where} ({_describe(doc)})"
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ManifestError(f"{where}: metadata.name: required string")
        annotations = meta.get("annotations")
        if annotations is not None and (
            not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values())
        ):
            raise ManifestError(f"{where}: metadata.annotations: must map strings to strings")
        if kind == "Pod":
            _check_pod(doc, where)
        try:
            if kind == "Pod":
                check_pod(doc)
            elif kind == "Node":
                check_node(doc)
        except ProtocolError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        out.append(doc)
    return out


def _flatten(docs: list[Any]) -> Iterator[Any]:
    for doc in docs:
        if doc is None:
            continue
        if (isinstance(doc, dict) and doc.get("kind") == "List") or (
            isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc
        ):
            items = doc.get("items") or []
            yield from items
        else:
            yield doc


def _check_pod(doc: dict[str, Any], where: str) -> None:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: spec: required mapping")
    for field in ("containers", "initContainers"):
        containers = spec.get(field)
        if containers is None and field == "initContainers":
            continue
        if not isinstance(containers, list) or (field == "containers" and not containers):
            raise ManifestError(f"{where}: spec.{field}: must be a non-empty list")
        for j, c in enumerate(containers):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                raise ManifestError(f"{where}: spec.{field}[{j}].name: required string")
            res = c.get("resources")
            if res is not None and not isinstance(res, dict):
                raise ManifestError(f"{where}: spec.{field}[{j}].resources: must be a mapping")
            for part in ("limits", "requests"):
                sub = (res or {}).get(part)
                if sub is not None and not isinstance(sub, dict):
                    raise ManifestError(f"{where}: spec.{field}[{j}].resources.{part}: must be a mapping")
