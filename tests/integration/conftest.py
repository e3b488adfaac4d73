"""Integration tier: a real etcd + kube-apiserver (+ kube-scheduler on demand) per session.

See :mod:`hami.testing.fixtures` for the fixtures and :mod:`hami.testing.controlplane` for the
control plane itself.
"""

from hami.testing.fixtures import *  # noqa: F403
