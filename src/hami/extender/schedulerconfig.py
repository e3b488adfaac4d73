"""The ``KubeSchedulerConfiguration`` that plugs hami into a stock kube-scheduler as an extender.

``filterVerb``/``bindVerb``, ``nodeCacheCapable: true`` (kube-scheduler sends node names, not whole
Node objects) and every managed resource ``ignoredByScheduler`` so the in-tree NodeResourcesFit
plugin does not count slices as whole devices. ``deploy/scheduler-config.yaml`` is generated from
this function (a test keeps the two equal): the extender in the same pod as kube-scheduler, on plain
HTTP at ``127.0.0.1:8080`` (``hami scheduler``'s default ``--bind``; nothing outside the pod reaches
it). With ``leader_elect`` kube-scheduler elects on the Lease ``<scheduler_name>`` in
``lease_namespace`` (charts/hami: the release namespace).
"""

from __future__ import annotations

from typing import Any

from hami.devices.registry import BackendRegistry


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
    cfg: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": leader_elect},
        "profiles": [{"schedulerName": scheduler_name}],
        "extenders": [extender],
    }
    if leader_elect:
        cfg["leaderElection"].update({"resourceName": scheduler_name, "resourceNamespace": lease_namespace})
    if kubeconfig:
        cfg["clientConnection"] = {"kubeconfig": kubeconfig}
    return cfg
