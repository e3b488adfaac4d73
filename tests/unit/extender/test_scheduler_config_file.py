"""deploy/scheduler-config.yaml is exactly what ``scheduler_configuration`` generates for a deployment.

The file was generated with the extender on ``http://127.0.0.1:8080`` (same pod as kube-scheduler,
``hami scheduler``'s default ``--bind``), the default device registry, ``leader_elect=True`` and the
``hami-system`` namespace; editing one without the other fails here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hami.devices.registry import default_registry
from hami.extender.cli import scheduler_command
from hami.extender.schedulerconfig import scheduler_configuration

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "scheduler-config.yaml"
DEFAULT_BIND = next(p.default for p in scheduler_command.params if p.name == "bind")


def test_deploy_file_equals_the_generated_configuration() -> None:
    shipped = yaml.safe_load(DEPLOY.read_text())
    generated = scheduler_configuration(
        extender_url=f"http://{DEFAULT_BIND}",
        registry=default_registry(),
        leader_elect=True,
        lease_namespace="hami-system",
    )
    assert shipped == generated


def test_every_managed_resource_is_ignored_by_the_in_tree_fit_plugin() -> None:
    cfg = yaml.safe_load(DEPLOY.read_text())
    (ext,) = cfg["extenders"]
    names = [r["name"] for r in ext["managedResources"]]
    assert names == default_registry().resource_names()
    assert {"nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores"} <= set(names)
    assert all(r["ignoredByScheduler"] is True for r in ext["managedResources"])
    # HAMi's verbs and mode: filter + bind, no prioritize, node names instead of Node objects; plus
    # hami's device-aware preempt verb (on by default, docs/quota-preemption.md)
    assert ext["filterVerb"] == "filter" and ext["bindVerb"] == "bind"
    assert "prioritizeVerb" not in ext and ext["preemptVerb"] == "preempt"
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is False
    # v1 spells it enableHTTPS (the legacy Policy JSON used enableHttps); plain HTTP inside the pod
    assert ext["enableHTTPS"] is False and "tlsConfig" not in ext
    assert cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert cfg["profiles"] == [{"schedulerName": "hami-scheduler"}]


def test_plain_http_and_no_leader_election() -> None:
    cfg = scheduler_configuration(
        extender_url="http://127.0.0.1:8080", registry=default_registry(), kubeconfig="/etc/k.conf"
    )
    (ext,) = cfg["extenders"]
    assert ext["enableHTTPS"] is False and "tlsConfig" not in ext
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["clientConnection"] == {"kubeconfig": "/etc/k.conf"}


def test_https_extender_gets_a_tls_config() -> None:
    cfg = scheduler_configuration(extender_url="https://hami.example:443", registry=default_registry())
    (ext,) = cfg["extenders"]
    assert ext["enableHTTPS"] is True and ext["tlsConfig"] == {"insecure": True}
