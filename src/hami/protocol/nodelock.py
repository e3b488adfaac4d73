"""The node lock value ``hami.io/mutex.lock``: ``<RFC3339>,<namespace>,<name>`` (legacy: bare timestamp).

A :class:`NodeLockCodec` bundles a lock's node annotation key with its value format; each backend
names its own (HAMi's is :data:`HAMI_NODE_LOCK`), and the extender's locker and the device plugin
use exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from hami.protocol.errors import ProtocolError
from hami.protocol.keys import NODE_LOCK


@dataclass(frozen=True, slots=True)
class NodeLock:
    """Who holds a node's lock and since when. ``namespace``/``name`` are None for a legacy value."""

    time: datetime
    namespace: str | None = None
    name: str | None = None

    def owned_by(self, namespace: str, name: str) -> bool:
        return self.namespace == namespace and self.name == name


def format_rfc3339(when: datetime) -> str:
    """Format like Go's ``time.RFC3339`` (seconds precision, ``Z`` for UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    text = when.replace(microsecond=0).isoformat()
    return text.replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ProtocolError(f"node lock time {text!r} is not RFC3339") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def encode_node_lock(lock: NodeLock) -> str:
    stamp = format_rfc3339(lock.time)
    if lock.namespace is None or lock.name is None:
        return stamp
    return f"{stamp},{lock.namespace},{lock.name}"


def releasable_by(value: str, namespace: str, name: str) -> bool:
    """May ``namespace/name`` remove this lock value? Yes if it owns it or the value is a legacy bare
    timestamp (no owner to check). A value that cannot be read is left alone: it blocks nobody (the
    next acquire replaces it) and deleting what one cannot read is never safe."""
    return _releasable(HAMI_NODE_LOCK, value, namespace, name)


def decode_node_lock(value: str) -> NodeLock:
    parts = value.split(",")
    if len(parts) == 1:
        return NodeLock(time=parse_rfc3339(parts[0]))
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ProtocolError(f"node lock {value!r} must be '<RFC3339>,<namespace>,<name>'")
    return NodeLock(time=parse_rfc3339(parts[0]), namespace=parts[1], name=parts[2])


def _releasable(codec: NodeLockCodec, value: str, namespace: str, name: str) -> bool:
    try:
        lock = codec.decode(value)
    except ProtocolError:
        return False
    return lock.namespace is None or lock.owned_by(namespace, name)


@dataclass(frozen=True, slots=True)
class NodeLockCodec:
    """A node lock: the Node annotation ``key`` and how its value is written and read."""

    key: str
    encode: Callable[[NodeLock], str] = encode_node_lock
    decode: Callable[[str], NodeLock] = decode_node_lock

    def with_key(self, key: str) -> NodeLockCodec:
        return self if key == self.key else replace(self, key=key)

    def releasable_by(self, value: str, namespace: str, name: str) -> bool:
        """:func:`releasable_by` in this codec's format."""
        return _releasable(self, value, namespace, name)

    @property
    def records_owner(self) -> bool:
        """Does a value name the pod holding the lock? (Cambricon's ``dsmlu.lock`` does not.)"""
        sample = NodeLock(datetime(2000, 1, 1, tzinfo=UTC), "ns", "pod")
        return self.decode(self.encode(sample)).namespace is not None

    def held_by(self, value: str, namespace: str, name: str) -> bool:
        """Is ``value`` a readable lock owned by ``namespace/name``?"""
        try:
            return self.decode(value).owned_by(namespace, name)
        except ProtocolError:
            return False


#: HAMi's NVIDIA lock (``hami.io/mutex.lock``, ``<RFC3339>,<namespace>,<name>``)
HAMI_NODE_LOCK = NodeLockCodec(key=NODE_LOCK)
