"""End-to-end tier: the real control plane (etcd, kube-apiserver, kube-scheduler) with hami's services."""

from hami.testing.fixtures import *  # noqa: F403
