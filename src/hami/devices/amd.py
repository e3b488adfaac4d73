"""AMD (HAMi CommonWord ``AMD``): ``amd.com/gpu`` cards, ``gpumem`` MiB (none given: the whole card),
``gpucores`` percent of the card (1-100), turned into compute units on each card.

Inventory: ``hami.io/node-amd-register`` (JSON) whose ``devcore`` is the card's compute-unit
count; no cards when kubelet has none of ``amd.com/gpu`` allocatable. Filters:
``amd.com/use-gputype`` / ``nouse-gputype`` and ``amd.com/use-gpu-uuid`` / ``nouse-gpu-uuid``.
Decision: ``hami.io/amd-devices-to-allocate`` / ``-allocated`` with the card's product type in the
type field (as HAMi writes it) and the compute units taken; lock ``hami.io/mutex.lock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from hami.devices.amd_config import AMDConfig
from hami.devices.base import Card, DeviceRequest, Placement, RequestError
from hami.devices.common import (
    SpecBackend,
    VendorSpec,
    filter_keys,
    hami_keys,
    int_resource,
    resource_fields,
)
from hami.devices.hooks import default_fits
from hami.protocol.pod import ContainerDevice

VENDOR = "AMD"


def compute_units(card: Card, percent: int) -> int:
    """The compute units ``percent`` of the card takes (rounded up, at least one when asked)."""
    return -(-card.totalcores * percent // 100)


class AMDBackend(SpecBackend):
    config_type = AMDConfig

    def make_spec(self, config: AMDConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR,
            **resource_fields(config),
            **hami_keys("amd", "amd", handshake=False),
            **filter_keys("amd.com", "gputype", "gpu-uuid"),
        )

    @property
    def resource_names(self) -> tuple[str, ...]:
        s = self.spec
        return (s.count_name, s.memory_name, self.config.resource_memory_percentage_name, s.core_name)

    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        pct_name = self.config.resource_memory_percentage_name
        cname = str(container.get("name", "?"))
        pct = int_resource(container, cname, pct_name)
        if pct is not None and int_resource(container, cname, self.spec.count_name) is None:
            raise RequestError(
                container=cname, resource=self.spec.count_name, reason=f"missing: {pct_name} given without it"
            )
        request = super().parse_container(container)
        if request is None or pct is None or request.mem:
            return request  # amd.com/gpumem wins over the percentage
        if not 1 <= pct <= 100:
            raise RequestError(container=cname, resource=pct_name, reason=f"{pct} must be 1 to 100 percent")
        # a share of memory is a slice: no cores given means none reserved, as with amd.com/gpumem
        cores = request.cores if int_resource(container, cname, self.spec.core_name) is not None else 0
        return replace(request, mem_percentage=pct, cores=cores)

    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        if cores is not None and not 1 <= cores <= 100:
            raise RequestError(
                container=cname, resource=self.spec.core_name, reason=f"{cores} must be 1 to 100 percent"
            )
        return super().request(cname, count, mem, 100 if cores is None and not mem else cores)

    # --- hook: Sizing (percent -> compute units) ----------------------------------------------
    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        return default_fits(card, _in_units(card, request))

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        return Placement(
            device=ContainerDevice(
                uuid=card.uuid,
                type=card.type,
                usedmem=request.mem_for(card.totalmem),
                usedcores=compute_units(card, request.cores),
            )
        )


def _in_units(card: Card, request: DeviceRequest) -> DeviceRequest:
    units = compute_units(card, request.cores)
    if units == request.cores:
        return request
    return DeviceRequest(
        vendor=request.vendor,
        count=request.count,
        mem=request.mem,
        mem_percentage=request.mem_percentage,
        cores=units,
    )
