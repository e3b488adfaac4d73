"""Kubernetes timestamp formats: ``Time`` (RFC 3339, seconds) and ``MicroTime`` (microseconds)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["micro_time", "now_utc", "parse_time", "rfc3339"]


def now_utc() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def rfc3339(dt: datetime | None = None) -> str:
    """``metav1.Time`` wire format: ``2026-11-22T07:40:00Z``."""
    dt = (dt or now_utc()).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(dt: datetime | None = None) -> str:
    """``metav1.MicroTime`` wire format: ``2026-11-22T07:40:00.123456Z`` (Lease renewTime etc.)."""
    dt = (dt or now_utc()).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """Parse ``Time`` or ``MicroTime`` (any fraction length, ``Z`` or an offset) into aware UTC."""
    v = value.strip()
    if v.endswith("Z") or v.endswith("z"):
        v = v[:-1] + "+00:00"
    # fromisoformat accepts up to 6 fractional digits; trim longer (nanosecond) fractions.
    if "." in v:
        head, _, rest = v.partition(".")
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        v = f"{head}.{(digits + '000000')[:6]}{rest[i:]}"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)
