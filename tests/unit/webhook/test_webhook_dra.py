"""DRA mode of the webhook: which pods convert, what the converted pod and its template hold, what is
refused (checked by applying the patch), and the server creating templates before it answers."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.config import DeviceConfig, parse_device_config
from hami.devices.base import DeviceRequest, RequestError
from hami.protocol import keys
from hami.webhook.admission import AdmissionRequest
from hami.webhook.claimrefs import hami_claim_refs
from hami.webhook.dra import DraPolicy, claim_request, claim_template, selector_expressions, wants_dra
from hami.webhook.mutate import AdmissionDecision, WebhookPolicy, mutate_pod
from hami.webhook.runner import dra_policy
from hami.webhook.server import decide

GPU, MEM, PCT, CORES, PRIO = (
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
    "nvidia.com/priority",
)
ALL = WebhookPolicy.from_config(DeviceConfig.default(), dra=DraPolicy(default_mode=keys.OPERATING_MODE_DRA))
OPT_IN = WebhookPolicy.from_config(DeviceConfig.default(), dra=DraPolicy())
PCT_NAME = PCT


def gpu_pod(
    limits: Mapping[str, Any], annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team", "annotations": dict(annotations or {})},
        "spec": {
            "containers": [{"name": "main", "image": "cuda", "resources": {"limits": dict(limits)}}],
            **spec,
        },
    }


def convert(
    p: dict[str, Any], pol: WebhookPolicy = ALL, ns_labels: dict[str, str] | None = None
) -> tuple[AdmissionDecision, dict[str, Any]]:
    original = copy.deepcopy(p)
    d = mutate_pod(p, namespace="team", namespace_labels=ns_labels, policy=pol)
    assert p == original, "mutate_pod must not modify its input"
    return d, jsonpatch.apply_patch(p, list(d.patch)) if d.patch else copy.deepcopy(p)


def request_of(template: Mapping[str, Any]) -> dict[str, Any]:
    [req] = template["spec"]["spec"]["devices"]["requests"]
    exactly: dict[str, Any] = req["exactly"]
    return exactly


# --- which pods ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("default", "annotation", "label", "expected"),
    [
        (keys.OPERATING_MODE_DEVICE_PLUGIN, None, None, False),
        (keys.OPERATING_MODE_DRA, None, None, True),
        (keys.OPERATING_MODE_DEVICE_PLUGIN, None, "dra", True),
        (keys.OPERATING_MODE_DRA, None, "device-plugin", False),
        (keys.OPERATING_MODE_DEVICE_PLUGIN, "dra", "device-plugin", True),  # the pod wins
        (keys.OPERATING_MODE_DRA, "device-plugin", "dra", False),
        (keys.OPERATING_MODE_DRA, None, "bogus", True),  # a namespace label it cannot read is ignored
    ],
)
def test_mode_rule(default: str, annotation: str | None, label: str | None, expected: bool) -> None:
    ann = {keys.OPERATING_MODE: annotation} if annotation else {}
    labels = {keys.OPERATING_MODE: label} if label else None
    assert wants_dra(ann, labels, DraPolicy(default_mode=default)) is expected


def test_bad_mode_annotation_is_denied_naming_it() -> None:
    d, _ = convert(gpu_pod({GPU: 1}, {keys.OPERATING_MODE: "gpu"}))
    assert not d.allowed and d.code == 400
    assert f"metadata.annotations[{keys.OPERATING_MODE}]" in d.message and "'gpu'" in d.message
    with pytest.raises(ValueError, match="default mode"):
        DraPolicy(default_mode="fast")
    with pytest.raises(ValueError, match="--dra"):
        dra_policy("sometimes")
    assert dra_policy("off") is None


def test_opt_in_leaves_other_pods_in_device_plugin_mode() -> None:
    d, patched = convert(gpu_pod({GPU: 1, MEM: 3000}), OPT_IN)
    assert d.allowed and not d.objects
    assert patched["spec"]["containers"][0]["resources"]["limits"][MEM] == 3000
    assert "resourceClaims" not in patched["spec"]
    d, patched = convert(gpu_pod({GPU: 1, MEM: 3000}), OPT_IN, {keys.OPERATING_MODE: "dra"})
    assert d.allowed and len(d.objects) == 1 and patched["spec"]["resourceClaims"]


def test_pods_without_gpus_are_not_converted() -> None:
    d, patched = convert(gpu_pod({"cpu": "1"}))
    assert d.allowed and not d.objects and "resourceClaims" not in patched["spec"]


# --- the converted pod ---------------------------------------------------------------------------
def test_converted_pod() -> None:
    d, patched = convert(
        gpu_pod({GPU: 2, MEM: 4000, CORES: 30, PRIO: 1, "cpu": "1"}, nodeSelector={"zone": "a"})
    )
    assert d.allowed, d.message
    [template] = d.objects
    spec = patched["spec"]
    container = spec["containers"][0]
    limits = container["resources"]["limits"]
    assert limits == {"cpu": "1", keys.DRA_STEER_RESOURCE: "1"}  # every nvidia.com resource gone
    assert container["resources"]["claims"] == [{"name": "hami-gpu-0"}]
    assert spec["resourceClaims"] == [
        {"name": "hami-gpu-0", "resourceClaimTemplateName": template["metadata"]["name"]}
    ]
    assert spec["nodeSelector"] == {"zone": "a", keys.OPERATING_MODE: keys.OPERATING_MODE_DRA}
    assert spec["schedulerName"] == "hami-scheduler"
    assert {"name": "CUDA_TASK_PRIORITY", "value": "1"} in container[
        "env"
    ]  # device-plugin defaults still apply
    assert template["metadata"]["namespace"] == "team"
    assert request_of(template) == {
        "deviceClassName": keys.DRA_DEVICE_CLASS,
        "allocationMode": "ExactCount",
        "count": 2,
        "capacity": {"requests": {"cores": "30", "memory": "4000Mi"}},
    }


def test_init_and_app_containers_get_their_own_claims_one_marker() -> None:
    p = gpu_pod({GPU: 1, MEM: 1000})
    p["spec"]["initContainers"] = [
        {"name": "warm", "image": "cuda", "resources": {"limits": {GPU: 1, MEM: 2000}}}
    ]
    p["spec"]["containers"].append(
        {"name": "side", "image": "cuda", "resources": {"limits": {GPU: 1, MEM: 1000}}}
    )
    d, patched = convert(p)
    assert d.allowed, d.message
    spec = patched["spec"]
    assert [c["name"] for c in spec["resourceClaims"]] == ["hami-gpu-init-0", "hami-gpu-0", "hami-gpu-1"]
    assert len(d.objects) == 2  # equal requests share one template
    assert spec["containers"][0]["resources"]["claims"] == [{"name": "hami-gpu-0"}]
    markers = [
        c["name"]
        for c in spec["initContainers"] + spec["containers"]
        if keys.DRA_STEER_RESOURCE in c["resources"].get("limits", {})
    ]
    assert markers == ["warm"]


def test_whole_card_and_percentage() -> None:
    # no memory given, or 100 percent: the whole card's memory (no memory request); whole-card cores
    for limits in ({GPU: 1}, {GPU: 1, PCT: 100}):
        d, _ = convert(gpu_pod(limits))
        assert request_of(d.objects[0])["capacity"]["requests"] == {"cores": "100"}
    d, _ = convert(gpu_pod({GPU: 1, PCT: 50}))
    assert not d.allowed and d.code == 400
    assert f"container 'main': {PCT}" in d.message and "50 percent" in d.message and "gpumem" in d.message


def test_no_cores_asks_for_zero_cores() -> None:
    d, _ = convert(gpu_pod({GPU: 1, MEM: 2000}))
    assert request_of(d.objects[0])["capacity"]["requests"] == {"cores": "0", "memory": "2000Mi"}


def test_type_and_uuid_annotations_become_selectors() -> None:
    ann = {
        keys.NVIDIA_USE_GPUTYPE: "A100, H100",
        keys.NVIDIA_NOUSE_GPUTYPE: "MIG",
        keys.NVIDIA_USE_GPUUUID: "GPU-a,GPU-b",
        keys.NVIDIA_NOUSE_GPUUUID: "GPU-c",
    }
    d, _ = convert(gpu_pod({GPU: 1, MEM: 1000}, ann))
    exprs = [s["cel"]["expression"] for s in request_of(d.objects[0])["selectors"]]
    attrs = f'device.attributes["{keys.DRA_DRIVER}"]'
    assert exprs == [
        f'{attrs}.productName.lowerAscii().contains("a100") || {attrs}.productName.lowerAscii().contains("h100")',
        f'!({attrs}.productName.lowerAscii().contains("mig"))',
        f'{attrs}.uuid in ["GPU-a", "GPU-b"]',
        f'!({attrs}.uuid in ["GPU-c"])',
    ]


@pytest.mark.parametrize("value", ['A100") || true || ("', "a\\b", "x" * 200, "gpu;rm"])
def test_unsafe_selector_values_are_denied(value: str) -> None:
    d, _ = convert(gpu_pod({GPU: 1}, {keys.NVIDIA_USE_GPUTYPE: value}))
    assert not d.allowed and d.code == 400
    assert f"metadata.annotations[{keys.NVIDIA_USE_GPUTYPE}]" in d.message


def test_conflicts_are_denied_naming_the_field() -> None:
    taken = gpu_pod({GPU: 1}, resourceClaims=[{"name": "hami-gpu-0", "resourceClaimName": "mine"}])
    d, _ = convert(taken)
    assert not d.allowed and "spec.resourceClaims" in d.message and "hami-gpu-0" in d.message
    pinned = gpu_pod({GPU: 1}, nodeSelector={keys.OPERATING_MODE: keys.OPERATING_MODE_DEVICE_PLUGIN})
    d, _ = convert(pinned)
    assert not d.allowed and f"spec.nodeSelector[{keys.OPERATING_MODE}]" in d.message
    # a pod's own claims are kept beside hami's
    own = gpu_pod({GPU: 1}, resourceClaims=[{"name": "nic", "resourceClaimName": "rdma"}])
    d, patched = convert(own)
    assert d.allowed and [c["name"] for c in patched["spec"]["resourceClaims"]] == ["nic", "hami-gpu-0"]


def test_other_vendors_cannot_be_served_in_dra_mode() -> None:
    cfg, _ = parse_device_config("cambricon:\n  resourceCountName: cambricon.com/vmlu\n")
    pol = WebhookPolicy.from_config(cfg, dra=DraPolicy(default_mode=keys.OPERATING_MODE_DRA))
    d, _ = convert(gpu_pod({GPU: 1, "cambricon.com/vmlu": 1}), pol)
    assert not d.allowed and d.code == 400
    assert "container 'main': MLU" in d.message and "DRA mode serves NVIDIA GPUs only" in d.message


# --- pure pieces ---------------------------------------------------------------------------------
@given(
    count=st.integers(1, 8),
    mem=st.integers(1, 200_000),
    cores=st.integers(0, 100),
    mem2=st.integers(1, 200_000),
)
def test_template_names_follow_content(count: int, mem: int, cores: int, mem2: int) -> None:
    def template(m: int) -> dict[str, Any]:
        req = DeviceRequest(vendor=keys.VENDOR_NVIDIA, count=count, mem=m, cores=cores)
        return claim_template(
            "ns", claim_request(req, container="c", annotations={}, percentage_resource=PCT_NAME)
        )

    a, b = template(mem), template(mem2)
    assert (a["metadata"]["name"] == b["metadata"]["name"]) == (mem == mem2)
    assert a == template(mem)  # deterministic
    assert len(a["metadata"]["name"]) <= 63
    exactly = request_of(a)
    assert exactly["count"] == count
    assert exactly["capacity"]["requests"] == {"cores": str(cores), "memory": f"{mem}Mi"}


def test_claim_request_percentage_error_names_container() -> None:
    req = DeviceRequest(vendor=keys.VENDOR_NVIDIA, count=1, mem_percentage=25)
    with pytest.raises(RequestError) as info:
        claim_request(req, container="trainer", annotations={}, percentage_resource=PCT_NAME)
    assert info.value.container == "trainer" and info.value.resource == PCT_NAME


def test_no_annotations_no_selectors() -> None:
    assert selector_expressions({}) == []


# --- the server creates the templates ------------------------------------------------------------
def admission(p: dict[str, Any], *, dry_run: bool = False) -> AdmissionRequest:
    return AdmissionRequest("admission.k8s.io/v1", "u1", "Pod", "CREATE", "team", "p", p, dry_run)


async def test_server_creates_templates_before_answering() -> None:
    created: list[Mapping[str, Any]] = []

    async def create(obj: Mapping[str, Any]) -> None:
        created.append(obj)

    d = await decide(admission(gpu_pod({GPU: 1, MEM: 1000})), ALL, None, create_object=create)
    assert d.allowed and [o["metadata"]["name"] for o in created] == [
        o["metadata"]["name"] for o in d.objects
    ]
    # a dry run creates nothing
    created.clear()
    d = await decide(admission(gpu_pod({GPU: 1, MEM: 1000}), dry_run=True), ALL, None, create_object=create)
    assert d.allowed and created == []


async def test_server_denies_when_a_template_cannot_be_created() -> None:
    async def refuse(obj: Mapping[str, Any]) -> None:
        raise PermissionError("forbidden: resourceclaimtemplates")

    d = await decide(admission(gpu_pod({GPU: 1, MEM: 1000})), ALL, None, create_object=refuse)
    assert not d.allowed and "ResourceClaimTemplate" in d.message and "forbidden" in d.message
    d = await decide(admission(gpu_pod({GPU: 1, MEM: 1000})), ALL, None, create_object=None)
    assert not d.allowed and "no API access" in d.message


# --- native claims on hami's classes are steered through hami (rule 9) -------------------------
def native_pod(*claims: tuple[str, str, str], scheduler: str | None = None) -> dict[str, Any]:
    """A pod with `spec.resourceClaims` entries ``(name, kind, object name)``; its second container
    uses the first claim."""
    refs = [
        {"name": n, "resourceClaimTemplateName" if kind == "template" else "resourceClaimName": obj}
        for n, kind, obj in claims
    ]
    spec: dict[str, Any] = {
        "resourceClaims": refs,
        "containers": [
            {"name": "sidecar", "image": "busybox"},
            {"name": "main", "image": "cuda", "resources": {"claims": [{"name": claims[0][0]}]}},
        ],
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team"}, "spec": spec}


STORE: dict[tuple[str, str], dict[str, Any]] = {
    ("resourceclaimtemplates", "mine"): {
        "spec": {
            "spec": {
                "devices": {
                    "requests": [{"name": "g", "exactly": {"deviceClassName": keys.DRA_DEVICE_CLASS}}]
                }
            }
        }
    },
    ("resourceclaims", "mig"): {
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "g",
                        "firstAvailable": [
                            {"name": "a", "deviceClassName": "gpu.example.com"},
                            {"name": "b", "deviceClassName": keys.DRA_MIG_DEVICE_CLASS},
                        ],
                    }
                ]
            }
        }
    },
    ("resourceclaims", "other"): {
        "spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.example.com"}}]}}
    },
    ("resourceclaims", "broken"): {"spec": "nonsense"},
}


async def store_get(plural: str, namespace: str, name: str) -> Mapping[str, Any] | None:
    assert namespace == "team"
    if name == "unreadable":
        raise RuntimeError("forbidden")
    return STORE.get((plural, name))


async def test_hami_claim_refs_reads_templates_claims_and_first_available() -> None:
    p = native_pod(
        ("a", "template", "mine"),
        ("b", "claim", "mig"),
        ("c", "claim", "other"),
        ("d", "claim", "broken"),
        ("e", "claim", "missing"),
        ("f", "claim", "unreadable"),
    )
    assert await hami_claim_refs(p, "team", store_get) == frozenset({"a", "b"})
    assert await hami_claim_refs(gpu_pod({GPU: 1}), "team", store_get) == frozenset()


async def test_a_native_claim_pod_gets_the_marker_and_hami_scheduler() -> None:
    d = await decide(admission(native_pod(("gpu", "template", "mine"))), ALL, claim_lookup=store_get)
    out = jsonpatch.apply_patch(native_pod(("gpu", "template", "mine")), list(d.patch))
    assert d.allowed and d.managed
    assert out["spec"]["schedulerName"] == "hami-scheduler"
    sidecar, main = out["spec"]["containers"]
    assert main["resources"]["limits"] == {keys.DRA_STEER_RESOURCE: "1"} and "resources" not in sidecar
    # other classes, another scheduler, and DRA mode off: untouched
    for p, pol in (
        (native_pod(("gpu", "claim", "other")), ALL),
        (native_pod(("gpu", "template", "mine"), scheduler="my-scheduler"), ALL),
        (native_pod(("gpu", "template", "mine")), WebhookPolicy.default()),
    ):
        d = await decide(admission(p), pol, claim_lookup=store_get)
        assert d.allowed and not d.patch, d
    # a pod that already carries the marker keeps it; only the scheduler is set
    marked = native_pod(("gpu", "template", "mine"))
    marked["spec"]["containers"][1]["resources"]["limits"] = {keys.DRA_STEER_RESOURCE: "1"}
    d = mutate_pod(
        marked, namespace="team", namespace_labels=None, policy=ALL, hami_claims=frozenset({"gpu"})
    )
    assert [op["path"] for op in d.patch] == ["/spec/schedulerName"]
