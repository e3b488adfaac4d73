"""Bad input gets a clear error naming the field and leaves nothing behind (issue 16, services).

Registrations a pod annotation could never carry or that describe no usable card, a bind whose
client fails with something other than a Kubernetes error, a filter of a pod without a uid,
wrong-typed fields in extender requests, admission reviews and ``hami simulate`` input, quantities
written with non-ASCII digits, and a malformed node event reaching the extender's sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from hami.cli import main
from hami.deviceplugin.register import register_annotations
from hami.deviceplugin.settings import NodeSettings, build_inventory
from hami.deviceplugin.sources import FakeSource
from hami.devices.registry import default_registry
from hami.extender.metrics import Metrics
from hami.extender.server import make_app
from hami.extender.service import BindRefused, ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import BindingArgs, ExtenderArgs, WireError
from hami.protocol import keys
from hami.protocol.errors import ProtocolError
from hami.protocol.node import DeviceInfo, decode_node_devices, encode_node_devices
from hami.protocol.pod import decode_pod_devices
from hami.protocol.quantity import parse_int_quantity, parse_quantity
from hami.scheduling.decide import Scheduler
from hami.simulate import simulate
from hami.webhook.admission import parse_review
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.server import decide as webhook_decide


def _dev(id: str = "GPU-0", **kw: Any) -> DeviceInfo:
    fields: dict[str, Any] = {
        "count": 10,
        "devmem": 16000,
        "devcore": 100,
        "type": "NVIDIA-T4",
        "health": True,
    }
    fields.update(kw)
    return DeviceInfo(id=id, **fields)


def _node(name: str, *devices: DeviceInfo, raw: str | None = None) -> dict[str, Any]:
    value = raw if raw is not None else encode_node_devices(devices)
    return {"metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: value}}}


def _pod(name: str = "p", *, uid: str | None = "uid-p", mem: int = 1000) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if uid is not None:
        meta["uid"] = uid
    return {
        "metadata": meta,
        "spec": {
            "schedulerName": "hami-scheduler",
            "containers": [
                {"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem}}}
            ],
        },
    }


class _Locker:
    """A node lock that records who holds it."""

    def __init__(self) -> None:
        self.held: set[str] = set()

    async def acquire(self, node: str, namespace: str, name: str) -> float:
        self.held.add(node)
        return 0.0

    async def release(self, node: str, namespace: str, name: str) -> None:
        self.held.discard(node)


class _Client:
    """An API client whose bind fails with a plain Python error (not a KubeError)."""

    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        self.pods = pods

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def get(self, path: str) -> dict[str, Any]:
        return self.pods[path.rsplit("/", 1)[-1]]

    async def bind_pod(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("connection reset by a proxy")

    async def create_event(self, *args: Any, **kwargs: Any) -> None:
        return None


def _service(*nodes: dict[str, Any], pods: dict[str, dict[str, Any]] | None = None) -> ExtenderService:
    sched = Scheduler(default_registry())
    sync = LedgerSync(sched, scheduler_name="hami-scheduler")
    for n in nodes:
        sync.node_changed(n)
    lookup = pods or {}
    return ExtenderService(
        scheduler=sched,
        sync=sync,
        client=_Client(lookup),  # type: ignore[arg-type]
        locker=_Locker(),  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: lookup.get(n),
        annotate_at_filter=False,
    )


# --------------------------------------------------------------------------- 1. separators in ids


@pytest.mark.parametrize("bad_id", ["GPU,0", "GPU:0", "GPU;0"])
def test_a_card_id_with_a_separator_rejects_only_that_node(bad_id: str) -> None:
    sched = Scheduler(default_registry())
    error = sched.observe_node(_node("a-bad", _dev(bad_id)))
    assert error is not None and "a-bad" in error and "'id'" in error
    assert sched.observe_node(_node("b-good", _dev("GPU-1"))) is None
    assert "a-bad" not in sched.state.nodes


def test_a_card_type_with_a_separator_rejects_that_node() -> None:
    with pytest.raises(ProtocolError, match="'type'"):
        decode_node_devices(encode_node_devices([_dev(type="T4;x")]))


async def test_filter_with_a_separator_node_answers_the_node_that_fits() -> None:
    svc = _service(_node("a-bad", _dev("GPU,x:y")), _node("b-good", _dev("GPU-1")))
    out = await svc.filter(ExtenderArgs(pod=_pod(), node_names=["a-bad", "b-good"]))
    assert out.error == "" and out.node_names == ["b-good"]
    assert "a-bad" in out.failed or out.failed == {}


def test_simulate_with_a_separator_node_warns_instead_of_a_traceback() -> None:
    result = simulate(
        [_node("a-bad", _dev("GPU;0")), _node("b-good", _dev("GPU-1"))],
        [_pod()],
        registry=default_registry(),
        node_policy="binpack",
        gpu_policy="spread",
    )
    assert result.placements[0]["node"] == "b-good"
    assert any("a-bad" in w and "'id'" in w for w in result.warnings)


# --------------------------------------------------------------------------- 2. unusable cards


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"devmem": 0}, "devmem"),
        ({"devmem": -1}, "devmem"),
        ({"devmem": 17 * 1024 * 1024}, "devmem"),
        ({"count": 0}, "count"),
        ({"count": 1025}, "count"),
        ({"mode": "turbo"}, "mode"),
        ({"index": -1}, "index"),
        ({"devcore": -5}, "devcore"),
    ],
)
def test_an_unusable_card_is_left_out_with_a_warning_naming_node_card_and_field(
    fields: dict[str, Any], field: str
) -> None:
    sched = Scheduler(default_registry())
    assert sched.observe_node(_node("n1", _dev("GPU-bad", **fields), _dev("GPU-ok", index=1))) is None
    assert [c.uuid for c in sched.state.nodes["n1"].cards] == ["GPU-ok"]
    (warning,) = sched.node_warnings["n1"]
    assert "n1" in warning and "GPU-bad" in warning and f"'{field}'" in warning
    d = sched.decide(_pod(mem=1000))
    assert d.node == "n1" and "GPU-bad" not in str(d.annotations)


def test_a_memory_scaling_that_rounds_a_card_to_0_mib_never_hands_out_a_0_mib_slice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """deviceMemoryScaling 0.0001 of a 5000 MiB card is 0.5 MiB, rounded down to 0: the device
    plugin says so naming the card and the field, registers it without memory, and the scheduler
    leaves it out (a 0-MiB slice would reach the container as a 0 limit); the other card is used."""
    cards = [
        {"uuid": "GPU-tiny", "model": "Tesla T4", "memory": 5000},
        {"uuid": "GPU-big", "model": "Tesla T4", "memory": 15360 * 10000},
    ]
    settings = NodeSettings(node_name="n1", memory_scaling=0.0001)
    with caplog.at_level("WARNING"):
        inventory = build_inventory(FakeSource({"cards": cards}), settings)
    assert [d.devmem for d in inventory] == [0, 15360]
    assert "GPU-tiny" in caplog.text and "devicememoryscaling" in caplog.text
    node = {"metadata": {"name": "n1", "annotations": register_annotations(inventory)}}
    sched = Scheduler(default_registry())
    sched.observe_node(node)
    assert [c.uuid for c in sched.state.nodes["n1"].cards] == ["GPU-big"]
    assert "GPU-tiny" in sched.node_warnings["n1"][0] and "'devmem'" in sched.node_warnings["n1"][0]


def test_a_node_whose_only_card_is_unusable_is_not_scheduled_onto() -> None:
    sched = Scheduler(default_registry())
    sched.observe_node(_node("n1", _dev("GPU-0", count=0)))
    assert "n1" not in sched.state.nodes and sched.node_warnings["n1"]
    assert sched.decide(_pod()).node is None


def test_a_mig_card_with_no_memory_of_its_own_is_still_kept() -> None:
    sched = Scheduler(default_registry())
    sched.observe_node(_node("n1", _dev("GPU-0", devmem=0, mode="mig")))
    assert [c.uuid for c in sched.state.nodes["n1"].cards] == ["GPU-0"]


def test_one_card_id_on_two_nodes_stays_with_the_first_until_it_leaves() -> None:
    sync = LedgerSync(Scheduler(default_registry()))
    sched = sync.scheduler
    first, second = _node("n1", _dev("GPU-same")), _node("n2", _dev("GPU-same"), _dev("GPU-2", index=1))
    sync.node_changed(first)
    sync.node_changed(second)
    assert [c.uuid for c in sched.state.nodes["n1"].cards] == ["GPU-same"]
    assert [c.uuid for c in sched.state.nodes["n2"].cards] == ["GPU-2"]
    (warning,) = sched.node_warnings["n2"]
    assert "n2" in warning and "GPU-same" in warning and "'id'" in warning and "n1" in warning
    sync.node_deleted(first)  # the first node is gone: the id is free for the other
    assert sorted(c.uuid for c in sched.state.nodes["n2"].cards) == ["GPU-2", "GPU-same"]
    assert "n2" not in sched.node_warnings


# --------------------------------------------------------------------------- 3. nothing left behind


async def test_bind_whose_client_raises_a_plain_error_releases_reservation_and_lock() -> None:
    pod = _pod()
    svc = _service(_node("n1", _dev("GPU-0")), pods={"p": pod})
    out = await svc.filter(ExtenderArgs(pod=pod, node_names=["n1"]))
    assert out.node_names == ["n1"]
    result = await svc.bind_pod(BindingArgs("p", "ns", "uid-p", "n1"))
    assert isinstance(result, BindRefused) and "RuntimeError" in result.reason
    assert not svc.reservations.is_assumed("uid-p")
    assert "uid-p" not in svc.scheduler.state.pods
    assert svc.locker.held == set()  # type: ignore[attr-defined]


async def test_filter_of_a_pod_without_uid_reserves_nothing() -> None:
    svc = _service(_node("n1", _dev("GPU-0")))
    out = await svc.filter(ExtenderArgs(pod=_pod(uid=None), node_names=["n1"]))
    assert out.node_names == [] and "metadata.uid" in out.error
    assert svc.scheduler.state.pods == {} and not svc.reservations.assumed
    with pytest.raises(WireError, match=r"metadata\.uid"):
        ExtenderArgs.parse({"Pod": _pod(uid=None), "NodeNames": ["n1"]})


@pytest.mark.parametrize("names", [["n1", 3], ["n1", None], [["n1"]], "n1", {"n1": 1}])
def test_node_names_that_are_not_a_list_of_strings_are_refused(names: Any) -> None:
    with pytest.raises(WireError, match=r"ExtenderArgs\.NodeNames must be a list of node names"):
        ExtenderArgs.parse({"Pod": _pod(), "NodeNames": names})
    assert ExtenderArgs.parse({"Pod": _pod(), "NodeNames": []}).node_names == []


# --------------------------------------------------------------------------- 4. wrong-typed fields

_WRONG: list[tuple[str, Any]] = [
    ("spec", "a string"),
    ("spec.containers", {"c": 1}),
    ("spec.containers[0]", "c"),
    ("spec.containers[0].resources", ["x"]),
    ("spec.containers[0].resources.limits", 5),
    ("spec.nodeName", 5),
    ("metadata.annotations", ["x"]),
    ("metadata.annotations['hami.io/a']", 5),
    ("metadata.annotations['nvidia.com/use-gputype']", ["A100"]),
    ("metadata.labels", ["x"]),
    ("metadata.name", 7),
    ("status", "Running"),
    ("status.phase", 3),
    ("spec.initContainers", "init"),
]


def _with(pod: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``pod`` with the field at ``path`` (``a.b[0].c`` or ``a['k']``) set to ``value``."""
    pod = json.loads(json.dumps(pod))
    parts: list[Any] = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        parts.append(int(part) if part.isdigit() else part.strip("'"))
    target: Any = pod
    for part in parts[:-1]:
        if isinstance(part, str) and part not in target:
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value
    return pod


@pytest.mark.parametrize(("path", "value"), _WRONG)
async def test_a_wrong_typed_pod_field_in_filter_is_a_400_naming_it(path: str, value: Any) -> None:
    svc = _service(_node("n1", _dev("GPU-0")))
    body = orjson.dumps({"Pod": _with(_pod(), path, value), "NodeNames": ["n1"]})
    async with TestClient(TestServer(make_app(svc, Metrics(svc.scheduler.state)))) as client:
        r = await client.post("/filter", data=body)
        text = await r.text()
    assert r.status == 400, text
    assert path.split("[")[0].split(".")[0] in text and "must be" in text
    assert svc.scheduler.state.pods == {}


@pytest.mark.parametrize(("path", "value"), _WRONG)
async def test_a_wrong_typed_pod_field_in_an_admission_review_is_denied_naming_it(
    path: str, value: Any
) -> None:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "namespace": "ns"},
    }
    review["request"]["object"] = _with(_pod(), path, value)
    decision = await webhook_decide(parse_review(orjson.dumps(review)), WebhookPolicy(default_registry()))
    assert not decision.allowed and decision.code == 400, decision.message
    assert "internal error" not in decision.message and "must be" in decision.message


@pytest.mark.parametrize(("path", "value"), _WRONG)
def test_a_wrong_typed_pod_field_in_simulate_input_is_an_error_line(
    path: str, value: Any, tmp_path: Path
) -> None:
    nodes, pods = tmp_path / "nodes.yaml", tmp_path / "pods.yaml"
    nodes.write_text(json.dumps({"kind": "Node", **_node("n1", _dev("GPU-0"))}))
    pods.write_text(json.dumps({"kind": "Pod", **_with(_pod(), path, value)}))
    result = CliRunner().invoke(main, ["simulate", "--nodes", str(nodes), "--pods", str(pods)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    named = path.split("[")[0].split(".")[-1]
    assert result.exit_code != 0 and "error:" in result.stderr and named in result.stderr, result.stderr


def test_a_wrong_typed_registration_annotation_marks_only_that_node() -> None:
    sync = LedgerSync(Scheduler(default_registry()))
    bad = _node("bad", _dev("GPU-0"))
    bad["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER] = 42
    sync.node_changed(bad)  # must not raise: the informer's handler would stop here
    sync.node_changed({"metadata": {"name": "worse", "annotations": ["x"]}})
    sync.node_changed(_node("good", _dev("GPU-1")))
    assert "bad" in sync.scheduler.node_errors and "annotations" in sync.scheduler.node_errors["bad"]
    assert "worse" in sync.scheduler.node_errors
    assert list(sync.scheduler.state.nodes) == ["good"]


def test_a_malformed_pod_event_is_ignored_and_the_sync_goes_on() -> None:
    sync = LedgerSync(Scheduler(default_registry()), scheduler_name="hami-scheduler")
    sync.node_changed(_node("n1", _dev("GPU-0")))
    sync.pod_changed(_with(_pod(), "spec", "x"))
    sync.pod_changed(_with(_pod(), "metadata.annotations", [1]))
    assert sync.scheduler.state.pods == {}


@pytest.mark.parametrize(
    "text", ["\u0661\u0660\u0660\u0660", "\uff11\uff10\uff10\uff10", "1\u0660", "\uff12Gi", "1e\u0663"]
)
def test_non_ascii_digits_are_not_a_quantity(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_quantity(text)
    with pytest.raises(ProtocolError):
        parse_int_quantity(text, field="nvidia.com/gpumem")


@pytest.mark.parametrize("text", ["GPU-0,NVIDIA,\u0661\u0660\u0660\u0660,30:;", "GPU-0,NVIDIA,1_000,30:;"])
def test_non_ascii_digits_are_not_a_pod_device_number(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_pod_devices(text)


def test_non_ascii_digits_are_not_a_legacy_registration_number() -> None:
    with pytest.raises(ProtocolError, match="devmem"):
        decode_node_devices("GPU-0,10,\u0661\u0666\u0660\u0660\u0660,100,T4,0,true:")


class _BrokenLocker(_Locker):
    """A lock whose acquire writes the lock and then fails with a plain Python error."""

    async def acquire(self, node: str, namespace: str, name: str) -> float:
        self.held.add(node)
        raise OSError("socket closed after the patch was sent")


async def test_bind_whose_lock_acquire_raises_a_plain_error_releases_reservation_and_lock() -> None:
    pod = _pod()
    svc = _service(_node("n1", _dev("GPU-0")), pods={"p": pod})
    svc.locker = _BrokenLocker()  # type: ignore[assignment]
    assert (await svc.filter(ExtenderArgs(pod=pod, node_names=["n1"]))).node_names == ["n1"]
    result = await svc.bind_pod(BindingArgs("p", "ns", "uid-p", "n1"))
    assert isinstance(result, BindRefused) and "OSError" in result.reason
    assert not svc.reservations.is_assumed("uid-p") and "uid-p" not in svc.scheduler.state.pods
    assert svc.locker.held == set()


def test_a_wrong_typed_node_field_in_simulate_input_is_an_error_line(tmp_path: Path) -> None:
    nodes, pods = tmp_path / "nodes.yaml", tmp_path / "pods.yaml"
    node = _node("n1", _dev("GPU-0"))
    node["metadata"]["labels"] = ["gpu"]
    nodes.write_text(json.dumps({"kind": "Node", **node}))
    pods.write_text(json.dumps({"kind": "Pod", **_pod()}))
    result = CliRunner().invoke(main, ["simulate", "--nodes", str(nodes), "--pods", str(pods)])
    assert result.exit_code == 2 and "metadata.labels" in result.stderr, result.stderr


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_number_is_not_a_quantity(value: float) -> None:
    with pytest.raises(ProtocolError, match="finite"):
        parse_quantity(value)
