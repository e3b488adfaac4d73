"""The fake node file's shared parts: its error and the typed read of one key."""

from __future__ import annotations

from typing import Any


class FakeSpecError(ValueError):
    """The fake node file is invalid; the message names the file, key and value."""


def req(where: str, d: dict[str, Any], key: str, typ: type, default: Any = ...) -> Any:
    """``d[key]`` of type ``typ`` (``default`` when absent; no default: required)."""
    if key not in d:
        if default is ...:
            raise FakeSpecError(f"{where}: missing key {key!r}")
        return default
    value = d[key]
    if typ is int and isinstance(value, bool):
        raise FakeSpecError(f"{where}.{key}: expected an integer, got {value!r}")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ):
        raise FakeSpecError(f"{where}.{key}: expected {typ.__name__}, got {value!r}")
    return value
