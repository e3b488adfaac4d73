"""Other vendors' devices on a fake node: their register annotations, in HAMi's formats.

The fake source's ``vendors:`` section (top level or per node under ``nodes.<name>``) names
device-config sections; for each, the node agent writes the annotation that vendor's own device
plugin writes, so the scheduler sees a heterogeneous node::

    vendors:
      hygon:                                   # a device-config section name
        count: 2                               # cards <VENDOR>-fake-<node>-<i>, all alike ...
        card: {type: DCU-Z100, memory: 65520, cores: 100, slots: 10}
      iluvatars:
        config: {chipName: BI-V100}            # the section's device-config (default: {})
        cards:                                 # ... or one entry per card
          - {uuid: ILU-0, type: BI-V100, memory: 32768, cores: 100, slots: 100, numa: 0}

The key, the format (HAMi's legacy colon form for Hygon and Iluvatar, the vendor's own JSON for
Metax sGPU — with each card's ``qosPolicy``, ``linkZone``, ``model`` —, HAMi's JSON otherwise) and the card
type's default come from the vendor's backend, built from the section the way the scheduler builds
it, so the annotation is exactly what that backend's ``node_cards`` reads. Vendors whose inventory
is the node's capacity (Cambricon, whole Metax GPUs, Mthreads, Enflame, AWS Neuron, whole Kunlun XPUs) are
refused: kubelet publishes capacity only for a resource a device plugin serves, and the fake agent
serves NVIDIA's alone.
"""

from __future__ import annotations

from typing import Any

import yaml

from hami.config.device import parse_device_config
from hami.deviceplugin.sources.spec import FakeSpecError, req
from hami.devices.common import RegisterEncoder, SpecBackend, WholeCards
from hami.devices.registry import default_registry
from hami.protocol.errors import ProtocolError
from hami.protocol.node import DeviceInfo, encode_node_devices, encode_node_devices_legacy

#: what a card is given when the spec does not say (memory in MiB, cores in the vendor's unit)
DEFAULT_MEMORY_MIB = 16384
DEFAULT_CORES = 100
#: slots of a shared card (a whole-card vendor's card has one)
DEFAULT_SLOTS = 10


def _register_backend(section: str, config: Any, where: str) -> SpecBackend:
    """The section's backend whose inventory is a register annotation."""
    entry = [config] if section == "iluvatars" and isinstance(config, dict) else config
    try:
        parsed, _ = parse_device_config(yaml.safe_dump({section: entry}), source=where)
    except ValueError as exc:
        raise FakeSpecError(f"{where}: {exc}") from None
    if section == "nvidia" or section not in parsed.sections():
        raise FakeSpecError(f"{where}: not another vendor's device-config section")
    made = [
        b
        for b in default_registry(parsed)
        if isinstance(b, SpecBackend) and b.spec.register_key and b.vendor != "NVIDIA"
    ]
    if not made:
        raise FakeSpecError(
            f"{where}: this vendor's inventory is the node's capacity, which kubelet publishes only for a "
            f"resource a device plugin serves; the fake device source advertises register-annotation "
            f"vendors only (docs/sandbox.md)"
        )
    if len(made) > 1:
        raise FakeSpecError(
            f"{where}: the section gives {len(made)} backends; give one chip per vendors entry"
        )
    return made[0]


def _card(backend: SpecBackend, raw: Any, pos: int, node_name: str, where: str) -> DeviceInfo:
    if not isinstance(raw, dict):
        raise FakeSpecError(f"{where}: expected a mapping, got {raw!r}")
    index = req(where, raw, "index", int, pos)
    return DeviceInfo(
        id=req(where, raw, "uuid", str, f"{backend.vendor}-fake-{node_name}-{index}"),
        index=index,
        count=req(where, raw, "slots", int, 1 if isinstance(backend, WholeCards) else DEFAULT_SLOTS),
        devmem=req(where, raw, "memory", int, DEFAULT_MEMORY_MIB),
        devcore=req(where, raw, "cores", int, DEFAULT_CORES),
        type=req(where, raw, "type", str, backend.vendor),
        numa=req(where, raw, "numa", int, 0),
        mode=req(where, raw, "mode", str, ""),
        health=req(where, raw, "healthy", bool, True),
    )


def _encode(backend: SpecBackend, devices: list[DeviceInfo], cards: list[Any], where: str) -> str:
    """The register annotation value, in the backend's own format when it has one."""
    if isinstance(backend, RegisterEncoder):
        fields = backend.register_extras
        extras = [
            {
                name: req(f"{where}.cards[{i}]", raw, name, kind, default)
                for name, (kind, default) in fields.items()
            }
            for i, raw in enumerate(cards)
        ]
        return backend.encode_register(devices, extras)
    if backend.spec.legacy_register:
        return encode_node_devices_legacy(devices)
    return encode_node_devices(devices)


def vendor_annotations(raw: Any, *, node_name: str, origin: str) -> dict[str, str]:
    """The register annotations of the ``vendors:`` section ``raw`` on node ``node_name``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FakeSpecError(f"{origin}: vendors: expected a mapping of device-config sections, got {raw!r}")
    out: dict[str, str] = {}
    for section, body in raw.items():
        where = f"{origin}: vendors.{section}"
        body = body or {}
        if not isinstance(body, dict):
            raise FakeSpecError(f"{where}: expected a mapping, got {body!r}")
        backend = _register_backend(str(section), body.get("config") or {}, where)
        cards = body.get("cards")
        if cards is None:
            count = body.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise FakeSpecError(f"{where}.count: expected a positive integer, got {count!r}")
            card = body.get("card") or {}
            if not isinstance(card, dict):
                raise FakeSpecError(f"{where}.card: expected a mapping, got {card!r}")
            cards = [{**card, "index": i} for i in range(count)]
        if not isinstance(cards, list) or not cards:
            raise FakeSpecError(f"{where}.cards: expected a non-empty list, got {cards!r}")
        devices = [_card(backend, c, i, node_name, f"{where}.cards[{i}]") for i, c in enumerate(cards)]
        try:
            value = _encode(backend, devices, cards, where)
        except ProtocolError as exc:
            raise FakeSpecError(f"{where}: {exc}") from None
        key = backend.spec.register_key
        if key in out:
            raise FakeSpecError(f"{where}: a second section writes {key}")
        out[key] = value
    return out
