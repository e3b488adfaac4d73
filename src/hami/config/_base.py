"""Shared machinery: the model base class, the unknown-key walk, YAML/JSON loading, error text."""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml
from pydantic import AliasChoices, AliasGenerator, BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from hami.config._types import CROSS_ERROR, RULE_ERROR
from hami.config.errors import ConfigError, format_path, format_value

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every configuration model: camelCase YAML aliases, snake_case attributes, immutable.

    Construct in Python with attribute names (``NvidiaConfig(device_split_count=4)``) or aliases;
    derive changed copies with ``model_copy(update={...})``.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    @classmethod
    def file_shape(cls, data: Any) -> Any:
        """Rewrite an accepted alternative file form into the canonical one (before key checks)."""
        return data


#: words HAMi spells in capitals inside a file key (``defaultGPUNum``, ``aiCPU``, ``resourceVCountName``)
_FILE_KEY_WORDS = {
    "gpu": "GPU",
    "cpu": "CPU",
    "gcu": "GCU",
    "drs": "DRS",
    "vgcu": "VGCU",
    "vcount": "VCount",
    "vmemory": "VMemory",
    "vcore": "VCore",
}


def file_key(name: str) -> str:
    """HAMi's file key for an attribute: camelCase, with HAMi's capitalised words
    (``default_gpu_num`` → ``defaultGPUNum``, ``resource_name_drs_gcu`` → ``resourceNameDRSGCU``)."""
    first, *rest = name.split("_")
    return first + "".join(_FILE_KEY_WORDS.get(w, w.capitalize()) for w in rest)


class SectionModel(ConfigModel):
    """A ``device-config.yaml`` model: every file key comes from :func:`file_key` (one alias
    generator); a field with extra accepted spellings says so with its own ``Field`` aliases."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=file_key, serialization_alias=file_key)
    )


def resource_names(model: BaseModel) -> dict[str, str]:
    """File key -> resource name for every non-empty ``resource_*`` field of a vendor section."""
    out: dict[str, str] = {}
    for name, info in type(model).model_fields.items():
        if name.startswith("resource_"):
            value = getattr(model, name)
            if isinstance(value, str) and value:
                out[info.serialization_alias or info.alias or name] = value
    return out


# ------------------------------------------------------------------------------ schema inspection


def field_keys(info: FieldInfo, name: str) -> list[str]:
    """The file keys accepted for a field, the canonical (serialised) one first."""
    va = info.validation_alias
    if isinstance(va, AliasChoices):
        keys = [c for c in va.choices if isinstance(c, str)]
        if info.serialization_alias and info.serialization_alias in keys:
            keys.remove(info.serialization_alias)
            keys.insert(0, info.serialization_alias)
        return keys
    if isinstance(va, str):
        return [va]
    return [info.alias or name]


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """``("model", M)`` for a nested model field, ``("list", M)`` for ``list[M]``; else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nested(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested(arg)
            if found is not None:
                return found
        return None
    if origin is list:
        (arg,) = typing.get_args(annotation) or (Any,)
        inner = _nested(arg)
        if inner is not None and inner[0] == "model":
            return ("list", inner[1])
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    return None


# ------------------------------------------------------------------------------ unknown keys, nulls


def clean(
    model: type[BaseModel],
    data: Any,
    loc: tuple[str | int, ...],
    source: str,
    warnings: list[str],
    errors: list[str],
) -> Any:
    """Return ``data`` with unknown keys and null values removed, appending a warning for each.

    One option given under two of its accepted spellings (``defaultMem`` and ``defaultMemory``) is
    an error: which one was meant cannot be known.

    Values of the wrong shape (a list where a mapping belongs, ...) are passed through untouched for
    the validator to reject with a proper message.
    """
    if issubclass(model, ConfigModel):
        data = model.file_shape(data)
    if not isinstance(data, Mapping):
        return data
    known: dict[str, tuple[str, FieldInfo]] = {}
    for name, info in model.model_fields.items():
        if info.exclude is True:
            continue  # not a file key
        for key in field_keys(info, name):
            known[key] = (name, info)
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        path = format_path((*loc, key))
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
            if not hint:
                lowered = {k.lower(): k for k in known}
                if key.lower() in lowered:
                    hint = [lowered[key.lower()]]
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            warnings.append(f"{source}: {path}: unknown key, ignored{suffix}")
            continue
        name, info = known[key]
        if name in seen:
            errors.append(
                f"{source}: {path} = {format_value(value)}: {key!r} and {seen[name]!r} are two spellings"
                " of the same option; give only one"
            )
            continue
        if value is None:
            warnings.append(f"{source}: {path}: null value, the default is used")
            continue
        seen[name] = key
        nested = _nested(info.annotation)
        if nested is not None:
            kind, sub = nested
            if kind == "model":
                value = clean(sub, value, (*loc, key), source, warnings, errors)
            elif isinstance(value, list):
                value = [
                    clean(sub, item, (*loc, key, i), source, warnings, errors) for i, item in enumerate(value)
                ]
        out[key] = value
    return out


# ---------------------------------------------------------------------------------- error messages

_PYDANTIC_RULES = {
    "missing": "is required",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
}


def validation_messages(exc: ValidationError, source: str, prefix: tuple[str | int, ...] = ()) -> list[str]:
    """One ``<source>: <path> = <value>: <rule>`` line per pydantic error."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc: tuple[str | int, ...] = (*prefix, *err["loc"])
        etype = err["type"]
        ctx = err.get("ctx") or {}
        if etype == CROSS_ERROR:
            path = format_path(loc)
            sub = str(ctx.get("path", ""))
            if sub:
                path = sub if path == "<top level>" else f"{path}{'' if sub.startswith('[') else '.'}{sub}"
            lines.append(f"{source}: {path} = {format_value(ctx.get('value'))}: {ctx.get('rule')}")
            continue
        if etype == RULE_ERROR:
            rule = str(ctx.get("rule", err["msg"]))
        else:
            rule = _PYDANTIC_RULES.get(etype, err["msg"])
        path = format_path(loc)
        if etype == "missing":
            lines.append(f"{source}: {path}: {rule}")
        else:
            lines.append(f"{source}: {path} = {format_value(err.get('input'))}: {rule}")
    return lines


def validate_model(
    model: type[M], data: Any, source: str, loc: tuple[str | int, ...] = ()
) -> tuple[M | None, list[str]]:
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, validation_messages(exc, source, loc)


# ------------------------------------------------------------------------------------------ parsing


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # the base constructor reports unhashable keys with its own message
        if key in seen:
            first = seen[key].start_mark
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first given on line {first.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError([f"{source}{where}: invalid YAML: {problem}"], source=source) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"], source=source) from exc


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json_or_yaml(text: str, source: str) -> Any:
    """Parse JSON (what HAMi's chart writes) or YAML; errors carry line and column."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        json_error = f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
    except ValueError as exc:  # duplicate key
        raise ConfigError([f"{source}: invalid JSON: {exc}"], source=source) from exc
    try:
        return load_yaml(text, source)
    except ConfigError:
        if text.lstrip().startswith(("{", "[")):
            raise ConfigError([json_error], source=source) from None
        raise


def fill_defaults(data: Any, defaults: dict[tuple[str, str], str]) -> Any:
    """Before-validator helper: fill derived defaults for keys given neither by alias nor by name."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for (alias, name), value in defaults.items():
        if alias not in out and name not in out:
            out[alias] = value
    return out


def key_value(data: dict[str, Any], alias: str, name: str) -> Any:
    """A raw section's value under its file key ``alias`` or its field ``name``."""
    return data.get(alias, data.get(name))
