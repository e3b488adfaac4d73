"""``hami.io/device-scoring-weights``: ``slot=1,core=1,memory=3`` — three non-negative integers, not all 0."""

from __future__ import annotations

from dataclasses import dataclass

from hami.protocol.errors import ProtocolError
from hami.protocol.keys import DEVICE_SCORING_WEIGHTS


@dataclass(frozen=True, slots=True)
class ScoringWeights:
    slot: int = 1
    core: int = 1
    memory: int = 1


DEFAULT_WEIGHTS = ScoringWeights()


def decode_scoring_weights(value: str) -> ScoringWeights:
    found: dict[str, int] = {}
    for part in value.split(","):
        key, sep, num = part.strip().partition("=")
        key = key.strip()
        if not sep or key not in ("slot", "core", "memory"):
            raise ProtocolError(
                f"{DEVICE_SCORING_WEIGHTS}: {part.strip()!r} must be slot=<n>, core=<n> or memory=<n>"
            )
        if key in found:
            raise ProtocolError(f"{DEVICE_SCORING_WEIGHTS}: key {key!r} given twice")
        num = num.strip()
        if not num.isdigit():
            raise ProtocolError(f"{DEVICE_SCORING_WEIGHTS}: {key}={num!r} must be a non-negative integer")
        found[key] = int(num, 10)
    if set(found) != {"slot", "core", "memory"}:
        raise ProtocolError(f"{DEVICE_SCORING_WEIGHTS}: {value!r} must give exactly slot, core and memory")
    if not any(found.values()):
        raise ProtocolError(f"{DEVICE_SCORING_WEIGHTS}: weights cannot all be 0")
    return ScoringWeights(slot=found["slot"], core=found["core"], memory=found["memory"])


def encode_scoring_weights(w: ScoringWeights) -> str:
    return f"slot={w.slot},core={w.core},memory={w.memory}"
