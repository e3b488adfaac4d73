"""Node handshake values: ``Requesting_<YYYY-MM-DD HH:MM:SS>``, ``Reported <time>``, ``Deleted_<time>``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

HandshakeState = Literal["requesting", "reported", "deleted", "unknown"]
_DATETIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class Handshake:
    state: HandshakeState
    time: datetime | None


def encode_requesting(when: datetime) -> str:
    """What the scheduler writes: ``Requesting_`` + Go's ``time.DateTime`` layout."""
    return "Requesting_" + when.strftime(_DATETIME)


def decode_handshake(value: str) -> Handshake:
    """Classify a handshake value; the time is None when it cannot be parsed (HAMi treats that as fresh)."""
    prefixes: tuple[tuple[str, HandshakeState], ...] = (
        ("Requesting_", "requesting"),
        ("Deleted_", "deleted"),
    )
    for prefix, state in prefixes:
        if value.startswith(prefix):
            try:
                return Handshake(state, datetime.strptime(value[len(prefix) :].strip(), _DATETIME))
            except ValueError:
                return Handshake(state, None)
    if value.startswith("Reported"):
        stamp = value[len("Reported") :].strip()[:19]
        try:
            return Handshake("reported", datetime.strptime(stamp, _DATETIME))
        except ValueError:
            return Handshake("reported", None)
    return Handshake("unknown", None)
