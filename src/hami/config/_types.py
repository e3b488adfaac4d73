"""Field types with HAMi-compatible coercion and one clear rule message each.

Every validator raises ``PydanticCustomError("hami_rule", <rule>)``; the parsers turn that into
``<file>: <key path> = <value>: <rule>``. The coercions are deliberately a little more forgiving
than Go's yaml.v2 (quoted numbers and ``"true"``/``"false"`` strings are accepted, as the HAMi chart
writes some of them quoted) but never silently wrong (``true`` is not an integer, ``1.5`` is not
an integer, ``nan`` is not a number).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import PlainValidator
from pydantic_core import PydanticCustomError

RULE_ERROR = "hami_rule"
CROSS_ERROR = "hami_cross"

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def rule_error(rule: str) -> PydanticCustomError:
    # Braces in the rule would be read as format fields by pydantic-core; pass the text as context.
    return PydanticCustomError(RULE_ERROR, "{rule}", {"rule": rule})


def cross_error(path: str, value: Any, rule: str) -> PydanticCustomError:
    """An error found by a model-level check; ``path`` is relative to the model being validated."""
    return PydanticCustomError(CROSS_ERROR, "{path}: {rule}", {"path": path, "value": value, "rule": rule})


def require_unique(keys: Iterable[str], path: str, rule: str) -> None:
    """Raise a `cross_error` at ``<path>[i].<field>`` for the first key seen before; ``path`` is
    ``"<list>[{}].<field>"`` and ``rule`` is completed with ``" (also <list>[j])"``."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in first:
            also = path.split("[", 1)[0] + f"[{first[key]}]"
            raise cross_error(path.format(i), key, f"{rule} (also {also})")
        first[key] = i


# ---------------------------------------------------------------------------------------------- ints


def _int_rule(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"must be an integer between {lo} and {hi}"
    if lo is not None:
        return f"must be an integer >= {lo}"
    if hi is not None:  # pragma: no cover - not used
        return f"must be an integer <= {hi}"
    return "must be an integer"


def _make_int(lo: int | None, hi: int | None) -> Callable[[Any], int]:
    rule = _int_rule(lo, hi)

    def validate(value: Any) -> int:
        n: int
        if isinstance(value, bool):
            raise rule_error(rule)
        if isinstance(value, int):
            n = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            n = int(value)
        elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            n = int(value.strip())
        else:
            raise rule_error(rule)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise rule_error(rule)
        return n

    return validate


def int_field(lo: int | None = None, hi: int | None = None) -> PlainValidator:
    return PlainValidator(_make_int(lo, hi), json_schema_input_type=int)


NonNegInt = Annotated[int, int_field(0)]
PositiveInt = Annotated[int, int_field(1)]
Percent = Annotated[int, int_field(0, 100)]
LogLevel = Annotated[int, int_field(0, 4)]


# -------------------------------------------------------------------------------------------- floats


def _validate_positive_float(value: Any) -> float:
    rule = "must be a number > 0"
    x: float
    if isinstance(value, bool):
        raise rule_error(rule)
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        x = float(value.strip())
    else:
        raise rule_error(rule)
    if not math.isfinite(x) or x <= 0:
        raise rule_error(rule)
    return x


PositiveFloat = Annotated[float, PlainValidator(_validate_positive_float, json_schema_input_type=float)]


# ---------------------------------------------------------------------------------------------- bool


def _validate_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise rule_error("must be true or false")


Bool = Annotated[bool, PlainValidator(_validate_bool, json_schema_input_type=bool)]


# ------------------------------------------------------------------------------------------- strings


def _to_str(value: Any) -> str:
    """YAML scalars become strings the way Go's yaml.v2 does it (``chipName: 910`` -> ``"910"``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise rule_error("must be a string")


Str = Annotated[str, PlainValidator(_to_str, json_schema_input_type=str)]


def _validate_nonempty(value: Any) -> str:
    s = _to_str(value)
    if not s.strip():
        raise rule_error("must be a non-empty string")
    return s


NonEmptyStr = Annotated[str, PlainValidator(_validate_nonempty, json_schema_input_type=str)]

# Kubernetes qualified name: optional DNS-subdomain prefix + "/" + name (<= 63 chars).
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_RESOURCE_RE = re.compile(rf"({_DNS_SUBDOMAIN}/)?{_QUALIFIED_NAME}")
_DNS_SUBDOMAIN_RE = re.compile(_DNS_SUBDOMAIN)
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _validate_resource_name(value: Any) -> str:
    rule = "must be a Kubernetes resource name such as vendor.com/name (or empty to leave it unused)"
    s = _to_str(value)
    if s == "":
        return s
    if not _RESOURCE_RE.fullmatch(s):
        raise rule_error(rule)
    prefix, _, name = s.rpartition("/")
    if len(name) > 63 or len(prefix) > 253:
        raise rule_error(rule)
    return s


ResourceName = Annotated[str, PlainValidator(_validate_resource_name, json_schema_input_type=str)]


def _validate_optional_subdomain(value: Any) -> str:
    s = _to_str(value)
    if s == "":
        return s
    if len(s) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(s):
        raise rule_error("must be empty or a DNS subdomain (lower-case letters, digits, '-', '.')")
    return s


OptionalDNSSubdomain = Annotated[
    str, PlainValidator(_validate_optional_subdomain, json_schema_input_type=str)
]


def _validate_subdomain(value: Any) -> str:
    s = _to_str(value)
    if not s or len(s) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(s):
        raise rule_error("must be a DNS subdomain (lower-case letters, digits, '-', '.')")
    return s


DNSSubdomain = Annotated[str, PlainValidator(_validate_subdomain, json_schema_input_type=str)]


def _validate_namespace(value: Any) -> str:
    s = _to_str(value)
    if not s or len(s) > 63 or not _DNS_LABEL_RE.fullmatch(s):
        raise rule_error("must be a Kubernetes namespace name (DNS label: lower-case letters, digits, '-')")
    return s


Namespace = Annotated[str, PlainValidator(_validate_namespace, json_schema_input_type=str)]

_MIG_PROFILE_RE = re.compile(r"[1-9][0-9]*g\.[A-Za-z0-9][A-Za-z0-9.+_-]*")


def _validate_mig_profile(value: Any) -> str:
    s = _to_str(value)
    if not _MIG_PROFILE_RE.fullmatch(s):
        raise rule_error("must be a MIG profile of the form <n>g.<memory> such as 1g.10gb")
    return s


MigProfile = Annotated[str, PlainValidator(_validate_mig_profile, json_schema_input_type=str)]


# -------------------------------------------------------------------------------------------- enums


def one_of(*choices: str) -> PlainValidator:
    rule = "must be one of: " + ", ".join(choices)

    def validate(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise rule_error(rule)

    return PlainValidator(validate, json_schema_input_type=str)


GPUCorePolicy = Literal["default", "force", "disable"]
MigStrategy = Literal["none", "single", "mixed"]
OperatingMode = Literal["hami-core", "mig", "mps", "dra"]
#: How the device plugin learns which container an allocation is for (docs/deviceplugin.md).
AllocationMode = Literal["lock", "cdi"]
NodeSchedulerPolicy = Literal["binpack", "spread"]
GPUSchedulerPolicy = Literal["binpack", "spread", "topology-aware"]

GPUCorePolicyField = Annotated[GPUCorePolicy, one_of("default", "force", "disable")]
MigStrategyField = Annotated[MigStrategy, one_of("none", "single", "mixed")]
OperatingModeField = Annotated[OperatingMode, one_of("hami-core", "mig", "mps", "dra")]
AllocationModeField = Annotated[AllocationMode, one_of("lock", "cdi")]
NodeSchedulerPolicyField = Annotated[NodeSchedulerPolicy, one_of("binpack", "spread")]
GPUSchedulerPolicyField = Annotated[GPUSchedulerPolicy, one_of("binpack", "spread", "topology-aware")]
