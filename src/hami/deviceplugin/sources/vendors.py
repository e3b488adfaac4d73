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
      vnpus:
        chip: Ascend910B3                      # a section with several chips: the one to write
        annotations: {hami-vnpu-core: "true"}  # other node annotations the vendor's plugin writes
        count: 8
        card: {memory: 65536, cores: 20, slots: 4, custominfo: {NetworkID: 0}}

The key, the format (HAMi's legacy colon form for Hygon and Iluvatar, Metax's own JSON for Metax
sGPU — its ``custominfo`` gives ``qosPolicy``, ``linkZone``, ``model`` —, HAMi's JSON otherwise, with
each card's ``custominfo`` for Ascend) and the card type's default come from the vendor's backend, built from the section the way the scheduler builds
it, so the annotation is exactly what that backend's ``node_cards`` reads.

Vendors whose inventory is the node's capacity (Cambricon, whole Metax GPUs, Mthreads, Enflame GCU,
AWS Neuron, whole Kunlun XPUs) give the capacity instead, which the node agent serves to kubelet as
one fake device-plugin resource per name (``hami.deviceplugin.capacity``), so kubelet publishes it::

      mthreads:
        resources: {mthreads.com/sgpu-core: 32, mthreads.com/sgpu-memory: 192}   # name: devices
      metax:                                   # both kinds in one section: capacity and sGPU cards
        resources: {metax-tech.com/gpu: 2}
        cards: [{uuid: SGPU-0, memory: 65536, slots: 16}]
"""

from __future__ import annotations

from typing import Any

import yaml

from hami.config.device import parse_device_config
from hami.deviceplugin.sources.spec import FakeSpecError, req
from hami.devices.common import SpecBackend, WholeCards
from hami.devices.registry import default_registry
from hami.protocol.errors import ProtocolError
from hami.protocol.node import DeviceInfo

#: what a card is given when the spec does not say (memory in MiB, cores in the vendor's unit)
DEFAULT_MEMORY_MIB = 16384
DEFAULT_CORES = 100
#: slots of a shared card (a whole-card vendor's card has one)
DEFAULT_SLOTS = 10


def _section_backends(section: str, config: Any, where: str) -> list[SpecBackend]:
    """The other-vendor backends the section ``config`` makes, built as the scheduler builds them."""
    entry = [config] if section == "iluvatars" and isinstance(config, dict) else config
    try:
        parsed, _ = parse_device_config(yaml.safe_dump({section: entry}), source=where)
    except ValueError as exc:
        raise FakeSpecError(f"{where}: {exc}") from None
    if section == "nvidia" or section not in {parsed.file_key(n) for n in parsed.sections()}:
        raise FakeSpecError(f"{where}: not another vendor's device-config section")
    return [b for b in default_registry(parsed) if isinstance(b, SpecBackend) and b.vendor != "NVIDIA"]


def _register_backend(section: str, config: Any, where: str, chip: Any = None) -> SpecBackend:
    """The section's backend whose inventory is a register annotation (``chip``: which one of a
    section that gives several, by vendor word)."""
    made = [b for b in _section_backends(section, config, where) if b.spec.register_key]
    if not made:
        raise FakeSpecError(
            f"{where}: this vendor's inventory is the node's capacity, which kubelet publishes only for a "
            f"resource a device plugin serves: give it as resources: {{<resource name>: <devices>}} "
            f"(docs/sandbox.md)"
        )
    if chip is not None:
        picked = [b for b in made if b.vendor == chip]
        if not picked:
            words = ", ".join(b.vendor for b in made)
            raise FakeSpecError(f"{where}.chip: {chip!r} is none of the section's chips ({words})")
        return picked[0]
    if len(made) > 1:
        raise FakeSpecError(
            f"{where}: the section gives {len(made)} backends; give one chip per vendors entry "
            f"(chip: one of {', '.join(b.vendor for b in made)})"
        )
    return made[0]


def _capacity_names(section: str, config: Any, where: str) -> list[str]:
    """The resource names of the section's capacity-registered backends (in backend order)."""
    names: list[str] = []
    for b in _section_backends(section, config, where):
        if not b.spec.register_key:
            names += [
                n for n in (b.spec.count_name, b.spec.memory_name, b.spec.core_name) if n and n not in names
            ]
    return names


def _sections(raw: Any, origin: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(section, where, body)`` of each entry of the ``vendors:`` mapping ``raw``."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise FakeSpecError(f"{origin}: vendors: expected a mapping of device-config sections, got {raw!r}")
    out = []
    for section, body in raw.items():
        where = f"{origin}: vendors.{section}"
        body = body or {}
        if not isinstance(body, dict):
            raise FakeSpecError(f"{where}: expected a mapping, got {body!r}")
        out.append((str(section), where, body))
    return out


#: the keys of a ``vendors:`` entry that only a capacity-registered vendor's entry has
CAPACITY_ONLY_KEYS = frozenset({"resources", "config"})


def vendor_capacity(raw: Any, *, origin: str) -> dict[str, int]:
    """The capacity the ``vendors:`` section ``raw`` asks kubelet to publish: resource name ->
    number of devices, from each entry's ``resources:``. A name must be one of the section's
    capacity-registered backends' resources (count, memory or cores, as its config names them);
    a count must be a positive integer; a name given by two sections is refused."""
    out: dict[str, int] = {}
    for section, where, body in _sections(raw, origin):
        resources = body.get("resources")
        if resources is None:
            continue
        if not isinstance(resources, dict) or not resources:
            raise FakeSpecError(
                f"{where}.resources: expected a non-empty mapping of resource names, got {resources!r}"
            )
        names = _capacity_names(section, body.get("config") or {}, where)
        if not names:
            raise FakeSpecError(
                f"{where}.resources: this vendor's inventory is a register annotation, not the node's "
                f"capacity; give its cards (cards: or count:)"
            )
        for name, count in resources.items():
            if name not in names:
                raise FakeSpecError(
                    f"{where}.resources.{name}: not a capacity resource of this section ({', '.join(names)})"
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise FakeSpecError(f"{where}.resources.{name}: expected a positive integer, got {count!r}")
            if name in out:
                raise FakeSpecError(f"{where}.resources.{name}: a second section serves this resource")
            out[name] = count
    return out


def _custom(raw: dict[str, Any], where: str) -> dict[str, Any]:
    custom = raw.get("custominfo") or {}
    if not isinstance(custom, dict):
        raise FakeSpecError(f"{where}.custominfo: expected a mapping, got {custom!r}")
    return custom


def _extra_annotations(body: dict[str, Any], where: str) -> dict[str, str]:
    extra = body.get("annotations") or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise FakeSpecError(f"{where}.annotations: expected a mapping of strings to strings, got {extra!r}")
    return extra


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


def vendor_annotations(raw: Any, *, node_name: str, origin: str) -> dict[str, str]:
    """The register annotations of the ``vendors:`` section ``raw`` on node ``node_name`` (an
    entry with ``resources:`` and no cards is a capacity vendor's: :func:`vendor_capacity`)."""
    out: dict[str, str] = {}
    for section, where, body in _sections(raw, origin):
        if "resources" in body and set(body) <= CAPACITY_ONLY_KEYS:
            continue
        backend = _register_backend(section, body.get("config") or {}, where, body.get("chip"))
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
        custom = [_custom(c, f"{where}.cards[{i}]") for i, c in enumerate(cards)]
        try:
            value = backend.encode_register(devices, custom)
        except ProtocolError as exc:
            raise FakeSpecError(f"{where}: {exc}") from None
        written = {backend.spec.register_key: value, **_extra_annotations(body, where)}
        for key, v in written.items():
            if key in out:
                raise FakeSpecError(f"{where}: a second section writes {key}")
            out[key] = v
    return out
