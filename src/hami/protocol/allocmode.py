"""How a node's device plugin identifies the pod of an allocation: ``hami.io/allocation-mode``.

The device plugin states its mode on its Node (refreshed with its registration):

* ``cdi`` — lock-free: Allocate returns a CDI name unique to the allocation and the plugin maps
  device IDs to the container at PreStartContainer through the kubelet PodResources API, so the
  scheduler binds without the node lock and the Binding carries the finished allocation;
* anything else, or no annotation — HAMi's protocol: the node lock identifies the pod at Allocate.

Reading is total: any Node (or None, a node not in the cache) has a mode, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hami.protocol import bodies, keys


def allocation_mode(node: Mapping[str, Any] | None) -> str:
    """``keys.ALLOCATION_MODE_CDI`` or ``keys.ALLOCATION_MODE_LOCK`` (the default for any other value)."""
    if node is None:
        return keys.ALLOCATION_MODE_LOCK
    value = bodies.annotations(node).get(keys.NODE_ALLOCATION_MODE)
    return keys.ALLOCATION_MODE_CDI if value == keys.ALLOCATION_MODE_CDI else keys.ALLOCATION_MODE_LOCK


def is_lock_free(node: Mapping[str, Any] | None) -> bool:
    """The node's device plugin allocates without the node lock."""
    return allocation_mode(node) == keys.ALLOCATION_MODE_CDI
