"""``vnpus:`` — the Huawei Ascend section of ``device-config.yaml``, next to its backends
(:mod:`hami.devices.ascend`); composed into :class:`hami.config.DeviceConfig` under HAMi's key
``vnpus`` (attribute ``ascend``)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from hami.config._base import SectionModel
from hami.config._base import fill_defaults as _fill
from hami.config._base import key_value as _get
from hami.config._types import (
    Bool,
    NonEmptyStr,
    NonNegInt,
    OptionalDNSSubdomain,
    PositiveInt,
    ResourceName,
    cross_error,
    require_unique,
)

__all__ = ["AscendConfig", "AscendTemplate", "VNPUConfig"]


class AscendTemplate(SectionModel):
    """A vNPU template (``vir02``, ``vir05_1c_16g``, ...): memory in MiB, AI cores and AI CPUs."""

    name: NonEmptyStr
    memory: PositiveInt
    ai_core: NonNegInt = 0
    ai_cpu: NonNegInt = 0


class VNPUConfig(SectionModel):
    """One ``vnpus.configs`` entry (one Ascend chip type). ``chipName`` and ``commonWord`` are
    required; resource names default to ``huawei.com/<commonWord>`` (``-memory``, ``-core``)."""

    chip_name: NonEmptyStr
    common_word: NonEmptyStr
    resource_name: ResourceName = ""
    resource_memory_name: ResourceName = ""
    resource_core_name: ResourceName = ""
    memory_allocatable: NonNegInt = 0
    memory_capacity: NonNegInt = 0
    memory_factor: PositiveInt = 1
    ai_core: NonNegInt = 0
    ai_cpu: NonNegInt = 0
    runtime_class_name: OptionalDNSSubdomain = ""
    overwrite_env: Bool = False
    super_pod: Bool = False
    templates: list[AscendTemplate] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        word = _get(data, "commonWord", "common_word")
        if not isinstance(word, str) or not word.strip():
            return data  # commonWord is missing or bad: reported by its validator
        res = _get(data, "resourceName", "resource_name")
        res = res if isinstance(res, str) and res else f"huawei.com/{word}"
        return _fill(
            data,
            {
                ("resourceName", "resource_name"): res,
                ("resourceMemoryName", "resource_memory_name"): f"{res}-memory",
                ("resourceCoreName", "resource_core_name"): f"{res}-core",
            },
        )

    @model_validator(mode="after")
    def _consistent(self) -> VNPUConfig:
        if not _ANNOTATION_WORD.fullmatch(self.common_word):
            raise cross_error(
                "commonWord",
                self.common_word,
                "must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
                "(it is part of annotation keys: hami.io/node-register-<commonWord>)",
            )
        if self.memory_capacity and self.memory_allocatable > self.memory_capacity:
            raise cross_error(
                "memoryAllocatable",
                self.memory_allocatable,
                f"must be <= memoryCapacity ({self.memory_capacity})",
            )
        require_unique(
            (t.name for t in self.templates), "templates[{}].name", "template names must be unique"
        )
        for i, t in enumerate(self.templates):
            if self.memory_capacity and t.memory > self.memory_capacity:
                raise cross_error(
                    f"templates[{i}].memory", t.memory, f"must be <= memoryCapacity ({self.memory_capacity})"
                )
        return self


#: what a commonWord may be: it names annotation keys (the name part of a qualified key)
_ANNOTATION_WORD = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _vnpu(
    chip: str,
    word: str,
    alloc: int,
    cap: int,
    ai_core: int,
    ai_cpu: int,
    templates: list[tuple[str, int, int, int]],
    *,
    super_pod: bool = False,
) -> VNPUConfig:
    return VNPUConfig(
        chip_name=chip,
        common_word=word,
        memory_allocatable=alloc,
        memory_capacity=cap,
        ai_core=ai_core,
        ai_cpu=ai_cpu,
        super_pod=super_pod,
        templates=[AscendTemplate(name=n, memory=m, ai_core=c, ai_cpu=p) for n, m, c, p in templates],
    )


def _default_vnpus() -> list[VNPUConfig]:
    return [
        _vnpu(
            "910A",
            "Ascend910A",
            32768,
            32768,
            30,
            0,
            [("vir02", 2184, 2, 0), ("vir04", 4369, 4, 0), ("vir08", 8738, 8, 0), ("vir16", 17476, 16, 0)],
        ),
        _vnpu(
            "910B2",
            "Ascend910B2",
            65536,
            65536,
            24,
            6,
            [("vir03_1c_8g", 8192, 3, 1), ("vir06_1c_16g", 16384, 6, 1), ("vir12_3c_32g", 32768, 12, 3)],
        ),
        _vnpu(
            "910B3",
            "Ascend910B3",
            65536,
            65536,
            20,
            7,
            [("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)],
        ),
        _vnpu(
            "910B4-1",
            "Ascend910B4-1",
            65536,
            65536,
            20,
            7,
            [("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)],
        ),
        _vnpu(
            "910B4",
            "Ascend910B4",
            32768,
            32768,
            20,
            7,
            [("vir05_1c_8g", 8192, 5, 1), ("vir10_3c_16g", 16384, 10, 3)],
        ),
        _vnpu(
            "310P3",
            "Ascend310P",
            21527,
            24576,
            8,
            7,
            [("vir01", 3072, 1, 1), ("vir02", 6144, 2, 2), ("vir04", 12288, 4, 4)],
        ),
        _vnpu(
            "Ascend910",
            "Ascend910C",
            65536,
            65536,
            20,
            7,
            [("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)],
            super_pod=True,
        ),
    ]


class AscendConfig(SectionModel):
    """``vnpus:`` — Huawei Ascend. HAMi releases before the ``{hamiVnpuCore, configs}`` form took a
    bare list of chip configs; that form is accepted too."""

    hami_vnpu_core: Bool = False
    configs: list[VNPUConfig] = Field(default_factory=_default_vnpus)

    @classmethod
    def file_shape(cls, data: Any) -> Any:
        return {"configs": data} if isinstance(data, list) else data

    @model_validator(mode="before")
    @classmethod
    def _legacy_list(cls, data: Any) -> Any:
        return cls.file_shape(data)

    @model_validator(mode="after")
    def _unique(self) -> AscendConfig:
        require_unique(
            (c.common_word for c in self.configs), "configs[{}].commonWord", "commonWord must be unique"
        )
        return self


# ------------------------------------------------------------------------------------ hami section
