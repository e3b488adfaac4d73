"""Property-based fuzzing of everything hami decodes from outside (issue 16, services).

Each property: any input either decodes or raises the module's own typed error (``WireError``,
``ReviewError``, ``ProtocolError``, ``ConfigError``) -- never another exception -- and what decodes
re-encodes to an equivalent value where the codec has an encoder. What the extender and the webhook
decode is also run through the decision they feed (filter, admission), which must answer without an
internal error. Bounded: ``max_examples`` per property keeps the whole file to a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.config import ConfigError, parse_device_config
from hami.devices.metax_sgpu_wire import decode_sgpu_devices, encode_sgpu_devices, vmemory_mib
from hami.devices.registry import default_registry
from hami.extender.service import ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import BindingArgs, ExtenderArgs, WireError
from hami.protocol import keys
from hami.protocol.errors import ProtocolError
from hami.protocol.handshake import decode_handshake, encode_requesting
from hami.protocol.node import (
    DeviceInfo,
    decode_node_devices,
    decode_pair_scores,
    encode_node_devices,
    encode_pair_scores,
)
from hami.protocol.nodelock import decode_node_lock, encode_node_lock
from hami.protocol.pod import (
    decode_mig_allocations,
    decode_pod_devices,
    encode_mig_allocations,
    encode_pod_devices,
)
from hami.protocol.quantity import parse_int_quantity, parse_quantity
from hami.scheduling.decide import Scheduler
from hami.webhook.admission import ReviewError, parse_review
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.server import decide as webhook_decide

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
#: text built from what the codecs split on, so that near-valid inputs come up often
codec_text = st.text(alphabet="GPU-0129,:;_ NVIDIAtrue.Z+eT\u0661\uff11", max_size=40)

resource_names = st.sampled_from(
    ["nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores", "nvidia.com/gpumem-percentage", "cpu"]
)
quantities = st.one_of(
    st.integers(-5, 40000).map(str),
    st.sampled_from(["1", "2", "4000", "1Gi", "500m", "1e3", "-1", "x", "", "\u0661"]),
    json_values,
)
annotation_keys = st.sampled_from(
    [
        keys.NVIDIA_USE_GPUTYPE,
        keys.NVIDIA_NOUSE_GPUTYPE,
        keys.NVIDIA_USE_GPUUUID,
        keys.NVIDIA_VGPU_MODE,
        keys.NVIDIA_NUMA_BIND,
        keys.VGPU_DEVICES_ALLOCATED,
        "hami.io/node-scheduler-policy",
        "hami.io/gpu-scheduler-policy",
        "other",
    ]
)


def _maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes anything JSON can hold."""
    return st.one_of(right, right, right, json_values)


containers = st.fixed_dictionaries(
    {"name": _maybe(st.sampled_from(["c", "d"]))},
    optional={
        "resources": _maybe(
            st.fixed_dictionaries(
                {}, optional={"limits": _maybe(st.dictionaries(resource_names, quantities, max_size=4))}
            )
        ),
        "restartPolicy": _maybe(st.just("Always")),
    },
)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"name": st.just("p"), "uid": _maybe(st.just("uid-p"))},
            optional={
                "namespace": _maybe(st.just("ns")),
                "annotations": _maybe(st.dictionaries(annotation_keys, _maybe(codec_text), max_size=3)),
                "labels": _maybe(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)),
            },
        )
    },
    optional={
        "spec": _maybe(
            st.fixed_dictionaries(
                {"containers": _maybe(st.lists(_maybe(containers), max_size=2))},
                optional={
                    "initContainers": _maybe(st.lists(_maybe(containers), max_size=2)),
                    "nodeName": _maybe(st.just("n1")),
                    "schedulerName": _maybe(st.just("hami-scheduler")),
                },
            )
        ),
        "status": _maybe(st.fixed_dictionaries({}, optional={"phase": _maybe(st.just("Pending"))})),
    },
)
devices = st.builds(
    DeviceInfo,
    id=st.text(alphabet="GPU-0129abx", min_size=1, max_size=8),
    count=st.integers(0, 2000),
    devmem=st.integers(-10, 2**25),
    devcore=st.integers(-1, 200),
    type=st.text(alphabet="NVIDIA-T4 ", max_size=8),
    index=st.integers(-1, 9),
    numa=st.integers(0, 3),
    mode=st.sampled_from(["hami-core", "mig", "mps", "turbo"]),
    health=st.booleans(),
)
registrations = st.one_of(
    st.lists(devices, max_size=3).map(lambda ds: encode_node_devices(ds)),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    codec_text,
)
nodes = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries({"name": st.sampled_from(["n1", "n2"])})},
    optional={
        "status": _maybe(st.fixed_dictionaries({}, optional={"allocatable": _maybe(st.just({"cpu": "4"}))})),
    },
).flatmap(
    lambda node: _maybe(
        st.dictionaries(st.just(keys.NODE_NVIDIA_REGISTER), _maybe(registrations), max_size=1)
    ).map(lambda ann: {**node, "metadata": {**node["metadata"], "annotations": ann}})
)


class _Client:
    async def create_event(self, *args: Any, **kwargs: Any) -> None:
        return None


def _service() -> ExtenderService:
    sched = Scheduler(default_registry())
    good = DeviceInfo(id="GPU-ok", count=10, devmem=16000, devcore=100, type="NVIDIA-T4", health=True)
    sched.observe_node(
        {"metadata": {"name": "n1", "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices([good])}}}
    )
    return ExtenderService(
        scheduler=sched,
        sync=LedgerSync(sched),
        client=_Client(),  # type: ignore[arg-type]
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: None,
        annotate_at_filter=False,
    )


# ----------------------------------------------------------------------------- the extender


@given(st.one_of(pods, json_values), st.one_of(st.just(["n1", "n2"]), json_values))
@SLOW
def test_filter_bodies_decode_or_raise_wire_error_and_filter_never_fails(pod: Any, names: Any) -> None:
    body = orjson.loads(orjson.dumps({"Pod": pod, "NodeNames": names}))
    try:
        args = ExtenderArgs.parse(body)
    except WireError:
        return
    svc = _service()
    out = asyncio.run(svc.filter(args))  # an exception here is what /filter answers "internal error" with
    assert out.error == "" or "metadata.uid" not in out.error
    # a decision holds its pod, a refusal holds nothing
    assert set(svc.scheduler.state.pods) <= {"uid-p"}
    if not out.node_names:
        assert svc.scheduler.state.pods == {}


@given(st.one_of(st.lists(nodes, max_size=3), json_values))
@SLOW
def test_filter_bodies_with_node_objects_decode_or_raise_wire_error(items: Any) -> None:
    body = {"Pod": {"metadata": {"name": "p", "uid": "u"}}, "Nodes": {"items": items}}
    try:
        args = ExtenderArgs.parse(orjson.loads(orjson.dumps(body)))
    except WireError:
        return
    assert args.nodes is not None and len(args.node_names) == len(args.nodes)


@given(st.dictionaries(st.sampled_from(["PodName", "podNamespace", "PodUID", "node", "x"]), json_values))
@FAST
def test_bind_bodies_decode_or_raise_wire_error(body: dict[str, Any]) -> None:
    try:
        args = BindingArgs.parse(body)
    except WireError:
        return
    assert all(isinstance(v, str) and v for v in (args.pod_name, args.pod_namespace, args.pod_uid, args.node))


@given(st.lists(nodes, max_size=4))
@SLOW
def test_node_events_never_stop_the_sync(events: list[dict[str, Any]]) -> None:
    sync = LedgerSync(Scheduler(default_registry()))
    for event in events:
        sync.node_changed(event)  # never raises
    for name, node in sync.scheduler.state.nodes.items():
        assert name not in sync.scheduler.node_errors
        uuids = [c.uuid for c in node.cards]
        assert all(c.count >= 1 and c.totalmem >= 0 for c in node.cards)
        assert not any(ch in u for u in uuids for ch in ",:;")
    every = [c.uuid for n in sync.scheduler.state.nodes.values() for c in n.cards]
    assert len(every) == len(set(every))  # one card id on one node only


# ------------------------------------------------------------------------------- the webhook


def _review(obj: Any, request: Any) -> bytes:
    if isinstance(request, dict):
        request = {**request, "object": obj}
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


requests = st.one_of(
    st.fixed_dictionaries(
        {"uid": _maybe(st.just("u"))},
        optional={
            "kind": _maybe(st.just({"kind": "Pod"})),
            "operation": _maybe(st.just("CREATE")),
            "namespace": _maybe(st.just("ns")),
        },
    ),
    json_values,
)


@given(st.one_of(pods, json_values), requests)
@SLOW
def test_admission_reviews_decode_or_raise_review_error_and_never_answer_500(obj: Any, request: Any) -> None:
    try:
        req = parse_review(_review(obj, request))
    except ReviewError:
        return
    decision = asyncio.run(webhook_decide(req, WebhookPolicy(default_registry())))
    assert decision.code != 500, decision.message


@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
@FAST
def test_any_bytes_are_a_review_or_a_review_error(body: bytes) -> None:
    with contextlib.suppress(ReviewError):
        parse_review(body)


# -------------------------------------------------------------------------- annotation codecs


@given(codec_text)
@FAST
def test_pod_devices_decode_or_protocol_error_and_round_trip(text: str) -> None:
    try:
        decoded = decode_pod_devices(text)
    except ProtocolError:
        return
    assert decode_pod_devices(encode_pod_devices(decoded)) == decoded


@given(registrations)
@FAST
def test_node_registrations_decode_or_protocol_error_and_round_trip(text: str) -> None:
    try:
        decoded = decode_node_devices(text)
    except ProtocolError:
        return
    assert decode_node_devices(encode_node_devices(decoded)) == decoded


@given(st.text(alphabet="0123456789-:TZ+.,ns/a ", max_size=40))
@FAST
def test_node_locks_decode_or_protocol_error_and_round_trip(text: str) -> None:
    try:
        lock = decode_node_lock(text)
    except ProtocolError:
        return
    again = decode_node_lock(encode_node_lock(lock))
    assert (again.namespace, again.name) == (lock.namespace, lock.name)
    assert again.time == lock.time.replace(microsecond=0)


@given(
    st.text(max_size=40)
    | st.sampled_from(["Requesting_", "Deleted_", "Reported "]).flatmap(
        lambda p: st.text(alphabet="0123456789-: ", max_size=22).map(lambda t: p + t)
    )
)
@FAST
def test_handshakes_always_classify(text: str) -> None:
    assert decode_handshake(text).state in ("requesting", "reported", "deleted", "unknown")


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1)))
@FAST
def test_requesting_handshakes_round_trip(when: datetime) -> None:
    when = when.replace(microsecond=0)
    out = decode_handshake(encode_requesting(when))
    assert (out.state, out.time) == ("requesting", when)


@given(
    json_values
    | st.lists(
        st.fixed_dictionaries(
            {
                "containerIndex": _maybe(st.integers(0, 3)),
                "deviceIndex": _maybe(st.integers(0, 3)),
                "gpuUUID": _maybe(st.just("GPU-0")),
                "profile": _maybe(st.just("1g.5gb")),
                "placement": _maybe(
                    st.fixed_dictionaries(
                        {"start": _maybe(st.integers(0, 7)), "size": _maybe(st.integers(1, 7))}
                    )
                ),
            },
            optional={
                "migUUID": json_values,
                "gpuInstanceID": _maybe(st.integers(0, 9)),
                "computeInstanceID": _maybe(st.integers(0, 9)),
            },
        ),
        max_size=3,
    )
)
@FAST
def test_mig_allocations_decode_or_protocol_error_and_round_trip(value: Any) -> None:
    try:
        decoded = decode_mig_allocations(orjson.dumps(value).decode())
    except ProtocolError:
        return
    assert decode_mig_allocations(encode_mig_allocations(decoded)) == decoded


@given(
    json_values
    | st.lists(
        st.fixed_dictionaries(
            {
                "uuid": _maybe(st.text(max_size=4)),
                "score": _maybe(
                    st.dictionaries(st.text(max_size=3), _maybe(st.integers(-5, 500)), max_size=3)
                ),
            }
        ),
        max_size=3,
    )
)
@FAST
def test_pair_scores_decode_or_protocol_error_and_round_trip(value: Any) -> None:
    try:
        decoded = decode_pair_scores(orjson.dumps(value).decode())
    except ProtocolError:
        return
    assert decode_pair_scores(encode_pair_scores(decoded)) == decoded


@given(
    json_values
    | st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "uuid",
                    "totalDevCount",
                    "totalCompute",
                    "totalVRam",
                    "numa",
                    "healthy",
                    "qosPolicy",
                    "linkZone",
                ]
            ),
            scalars,
            max_size=8,
        ),
        max_size=3,
    )
)
@FAST
def test_metax_sgpu_inventories_decode_or_protocol_error_and_round_trip(value: Any) -> None:
    try:
        decoded = decode_sgpu_devices(orjson.dumps(value).decode())
    except ProtocolError:
        return
    assert decode_sgpu_devices(encode_sgpu_devices(decoded)) == decoded


# ---------------------------------------------------------------------------------- quantities

quantity_text = st.from_regex(
    r"[+-]?[0-9\u0661\uff11]{0,4}(\.[0-9]{0,3})?(Ki|Mi|Gi|m|k|M|e[+-]?[0-9]{1,3}|E99999)?", fullmatch=True
)


@given(quantity_text | json_values)
@FAST
def test_quantities_parse_or_protocol_error(value: Any) -> None:
    try:
        q = parse_quantity(value)
    except ProtocolError:
        return
    assert isinstance(q, Decimal) and q.is_finite()
    if isinstance(value, str):
        assert value.strip().isascii()
    try:
        n = parse_int_quantity(value, field="nvidia.com/gpumem")
    except ProtocolError:
        return
    assert n == q and -(2**63) <= n < 2**63


@given(quantity_text | json_values)
@FAST
def test_metax_vmemory_parses_or_protocol_error(value: Any) -> None:
    try:
        mib = vmemory_mib(value, field="metax-tech.com/vmemory")
    except ProtocolError:
        return
    q = parse_quantity(value)
    # a bare number is GiB, one with a unit bytes: either way an exact whole number of MiB
    assert mib in (int(q) * 1024, int(q) // 2**20)


# ------------------------------------------------------------------------------- device config

sections = st.dictionaries(
    st.sampled_from(["nvidia", "hygon", "cambricon", "vastai", "unknown"]),
    _maybe(
        st.dictionaries(
            st.sampled_from(
                [
                    "resourceCountName",
                    "deviceSplitCount",
                    "deviceMemoryScaling",
                    "defaultMemory",
                    "knownMigGeometries",
                    "x",
                ]
            ),
            json_values,
            max_size=3,
        )
    ),
    max_size=3,
)


@given(sections)
@FAST
def test_device_config_loads_or_raises_config_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_device_config(json.dumps(data), source="fuzz.yaml")


def test_the_properties_really_ran() -> None:
    """A canary: a known-bad and a known-good input through the decoders the properties drive."""
    with pytest.raises(ProtocolError):
        decode_node_devices('[{"id":"a,b","count":1,"devmem":1,"devcore":1,"type":"t"}]')
    with pytest.raises(WireError):
        ExtenderArgs.parse({"Pod": {"metadata": {"name": "p", "uid": "u"}, "spec": "x"}, "NodeNames": []})
    assert decode_node_lock(encode_node_lock(decode_node_lock("2024-01-01T00:00:00Z,ns,p"))).name == "p"
