"""Kubernetes resource quantities (``8000``, ``1Gi``, ``500m``, ``1e3``) parsed exactly with Decimal."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from hami.protocol.errors import ProtocolError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


def parse_quantity(value: object) -> Decimal:
    """Parse a quantity (string or number) into an exact Decimal, or raise ProtocolError."""
    if isinstance(value, bool):
        raise ProtocolError(f"quantity {value!r} is not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value))
    if not isinstance(value, str):
        raise ProtocolError(f"quantity {value!r} is not a string or number")
    m = _RE.match(value.strip())
    if not m:
        raise ProtocolError(f"quantity {value!r} is not a valid Kubernetes quantity")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise ProtocolError(f"quantity {value!r} is not a valid Kubernetes quantity") from None
    suffix = m.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * (Decimal(10) ** int(suffix[1:]))


def parse_int_quantity(value: object, *, field: str) -> int:
    """Parse a quantity that must be a whole number (device counts, MiB, percentages)."""
    try:
        q = parse_quantity(value)
    except ProtocolError as exc:
        raise ProtocolError(f"{field}: {exc}") from None
    if q != q.to_integral_value():
        raise ProtocolError(f"{field}: {value!r} must be a whole number")
    return int(q)
