"""Kubernetes API access for hami: async, raw dicts on the hot path.

Modules (one job each):

* :mod:`hami.kube.config` — kubeconfig / in-cluster service-account settings → :class:`KubeConfig`.
* :mod:`hami.kube.client` — :class:`KubeClient` (aiohttp + orjson): get/list/watch/create/patch/
  delete, RV-precondition merge patches with conflict retry, uid-checked binding, events.
* :mod:`hami.kube.informer` — :class:`Informer`: list+watch cache with bookmarks and 410 re-list.
* :mod:`hami.kube.leader` — :class:`LeaderElector`: Lease-based leader election.
* :mod:`hami.kube.errors` — typed errors; :mod:`hami.kube.paths` — REST paths and cache keys;
  :mod:`hami.kube.times` — Kubernetes timestamp formats.

The raw objects these return are read with :mod:`hami.protocol.bodies` (pure, so the scheduling
core uses it too). See ``docs/kube.md`` for the design notes.
"""

from hami.kube.client import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, KubeClient, WatchStream
from hami.kube.config import KubeConfig, KubeConfigError, load_config, load_incluster_config, load_kubeconfig
from hami.kube.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    GoneError,
    KubeError,
    NotFoundError,
    TransportError,
)
from hami.kube.informer import Informer
from hami.kube.leader import LeaderElector
from hami.kube.paths import api_path, object_key, object_path, split_key

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "AlreadyExistsError",
    "ApiError",
    "ConflictError",
    "GoneError",
    "Informer",
    "KubeClient",
    "KubeConfig",
    "KubeConfigError",
    "KubeError",
    "LeaderElector",
    "NotFoundError",
    "TransportError",
    "WatchStream",
    "api_path",
    "load_config",
    "load_incluster_config",
    "load_kubeconfig",
    "object_key",
    "object_path",
    "split_key",
]
