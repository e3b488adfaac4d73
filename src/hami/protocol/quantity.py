"""Kubernetes resource quantities (``8000``, ``1Gi``, ``500m``, ``1e3``) parsed exactly with Decimal."""

from __future__ import annotations

import math
import re
from decimal import Decimal, DecimalException, InvalidOperation

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
#: Largest decimal exponent accepted (``1e30``); a larger one only ever spells a value beyond int64
#: and ``Decimal(10) ** 999999`` followed by ``int()`` builds a million-digit number (seconds of CPU).
MAX_EXPONENT = 30
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: ASCII digits only: ``\d`` alone would take Arabic-Indic or full-width digits, which Kubernetes
#: refuses and Python's ``Decimal``/``int`` read as numbers
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$", re.ASCII)


_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)


def ascii_int(text: str) -> int:
    """``int(text, 10)`` for ASCII digits only (surrounding whitespace allowed): ``int`` alone also
    takes ``1_000`` and Arabic-Indic or full-width digits. Raises ValueError."""
    stripped = text.strip()
    if not _INT_RE.fullmatch(stripped):
        raise ValueError(f"not an integer: {text!r}")
    return int(stripped, 10)


def parse_quantity(value: object) -> Decimal:
    """Parse a quantity (string or number) into an exact Decimal, or raise ProtocolError."""
    if isinstance(value, bool):
        raise ProtocolError(f"quantity {value!r} is not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # YAML's .inf / .nan
            raise ProtocolError(f"quantity {value!r} is not a finite number")
        return Decimal(str(value))
    if not isinstance(value, str):
        raise ProtocolError(f"quantity {value!r} is not a string or number")
    m = _RE.match(value.strip())
    if not m:
        raise ProtocolError(f"quantity {_show(value)} is not a valid Kubernetes quantity")
    suffix = m.group(2) or ""
    if suffix not in _BINARY and suffix not in _DECIMAL:  # an exponent: e3, E+6, e-3
        exp_digits = suffix[1:].lstrip("+-").lstrip("0")
        if len(exp_digits) > 2 or int(exp_digits or "0") > MAX_EXPONENT:
            raise ProtocolError(f"quantity {_show(value)} has an exponent beyond ±{MAX_EXPONENT}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise ProtocolError(f"quantity {_show(value)} is not a valid Kubernetes quantity") from None
    try:
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        if suffix in _DECIMAL:
            return number * _DECIMAL[suffix]
        return number * (Decimal(10) ** int(suffix[1:]))
    except DecimalException:  # InvalidOperation, Overflow (a mantissa of a million digits times 2**60)
        raise ProtocolError(f"quantity {_show(value)} is out of range") from None


def parse_int_quantity(value: object, *, field: str) -> int:
    """Parse a quantity that must be a whole number (device counts, MiB, percentages)."""
    try:
        q = parse_quantity(value)
    except ProtocolError as exc:
        raise ProtocolError(f"{field}: {exc}") from None
    # Checked before to_integral_value()/int(): int() of 1E+999998 takes seconds.
    if not q.is_finite() or not INT64_MIN <= q <= INT64_MAX:
        raise ProtocolError(f"{field}: {_show(value)} is out of range (more than a 64-bit integer holds)")
    if q != q.to_integral_value():
        raise ProtocolError(f"{field}: {_show(value)} must be a whole number")
    return int(q)


def mib_quantity(mib: int) -> str:
    """``mib`` MiB as Kubernetes writes it back (its canonical binary form: the largest unit that
    divides it exactly, ``40960`` → ``40Gi``, ``4864`` → ``4864Mi``, ``0`` → ``0``), so an object
    hami writes reads back equal. ValueError for a negative amount."""
    if mib < 0:
        raise ValueError(f"a memory amount cannot be negative: {mib} MiB")
    if mib == 0:
        return "0"
    for unit, size in (("Pi", 2**30), ("Ti", 2**20), ("Gi", 2**10)):
        if mib % size == 0:
            return f"{mib // size}{unit}"
    return f"{mib}Mi"


def _show(value: object) -> str:
    """``repr(value)``, cut short so that a huge input does not make a huge error message."""
    text = repr(value)
    return text if len(text) <= 64 else f"{text[:60]}...{text[-1]}"
