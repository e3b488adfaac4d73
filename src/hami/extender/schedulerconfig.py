"""The ``KubeSchedulerConfiguration`` that plugs hami into a stock kube-scheduler as an extender.

``filterVerb``/``bindVerb``, ``nodeCacheCapable: true`` (kube-scheduler sends node names, not whole
Node objects) and every managed resource ``ignoredByScheduler`` so the in-tree NodeResourcesFit
plugin does not count slices as whole devices. ``deploy/scheduler-config.yaml`` is generated from
this function (a test keeps the two equal): the extender in the same pod as kube-scheduler, on plain
HTTP at ``127.0.0.1:8080`` (``hami scheduler``'s default ``--bind``; nothing outside the pod reaches
it). With ``leader_elect`` kube-scheduler elects on the Lease ``<scheduler_name>`` in
``lease_namespace`` (charts/hami: the release namespace).

With ``dra``, a second extender entry serves DRA-mode pods: it manages only the marker
``hami.io/dra`` the webhook puts on converted pods, has ``filterVerb: dra/filter`` and
``prioritizeVerb: dra/prioritize`` (weight :data:`DRA_WEIGHT`, so hami's node policy outweighs the
in-tree scores) and no ``bindVerb``: kube-scheduler's DynamicResources plugin allocates the
devices and kube-scheduler binds the pod itself.
"""

from __future__ import annotations

from typing import Any

from hami.devices.registry import BackendRegistry
from hami.protocol import keys

#: the DRA extender's prioritize weight: its 0..10 score becomes 0..100 x weight, against in-tree
#: score plugins whose weights sum to about 12 (each 0..100)
DRA_WEIGHT = 20


def scheduler_configuration(
    *,
    extender_url: str,
    registry: BackendRegistry,
    scheduler_name: str = "hami-scheduler",
    leader_elect: bool = False,
    lease_namespace: str = "kube-system",
    kubeconfig: str | None = None,
    http_timeout: str = "30s",
    insecure_tls: bool = True,
    preempt: bool = True,
    dra: bool = False,
) -> dict[str, Any]:
    """With ``preempt`` (the default, as the chart's ``scheduler.preemption.enabled``),
    ``preemptVerb: preempt`` too: kube-scheduler's DefaultPreemption asks hami which of its victims
    free the right cards (:mod:`hami.scheduling.preempt`). The verb only prunes or vetoes
    kube-scheduler's own proposals, so it never evicts more than kube-scheduler alone would."""
    extender: dict[str, Any] = {
        "urlPrefix": extender_url,
        "filterVerb": "filter",
        "bindVerb": "bind",
        "enableHTTPS": extender_url.startswith("https://"),
        "nodeCacheCapable": True,
        "weight": 1,
        "httpTimeout": http_timeout,
        "ignorable": False,
        "managedResources": [{"name": n, "ignoredByScheduler": True} for n in registry.resource_names()],
    }
    if preempt:
        extender["preemptVerb"] = "preempt"
    if extender["enableHTTPS"]:
        extender["tlsConfig"] = {"insecure": insecure_tls}
    extenders = [extender]
    if dra:
        steering = {
            k: v
            for k, v in extender.items()
            if k not in ("filterVerb", "bindVerb", "preemptVerb", "managedResources", "weight")
        }
        steering.update(
            filterVerb="dra/filter",
            prioritizeVerb="dra/prioritize",
            weight=DRA_WEIGHT,
            managedResources=[{"name": keys.DRA_STEER_RESOURCE, "ignoredByScheduler": True}],
        )
        extenders.append(steering)
    cfg: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": leader_elect},
        "profiles": [{"schedulerName": scheduler_name}],
        "extenders": extenders,
    }
    if leader_elect:
        cfg["leaderElection"].update({"resourceName": scheduler_name, "resourceNamespace": lease_namespace})
    if kubeconfig:
        cfg["clientConnection"] = {"kubeconfig": kubeconfig}
    return cfg
