"""The one error type raised for a bad configuration file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["ConfigError", "format_path", "format_value"]


class ConfigError(ValueError):
    """A configuration file (or value) is invalid.

    Every problem found in one file is collected; ``errors`` holds one self-contained line per
    problem, each naming the file, the dotted key path, the offending value and the rule broken::

        device-config.yaml: nvidia.deviceSplitCount = -1: must be an integer >= 1
    """

    def __init__(
        self, errors: Iterable[str], *, source: str = "<string>", warnings: Iterable[str] = ()
    ) -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        # Unknown-key warnings found in the same file before it was rejected (not in the message).
        self.warnings: list[str] = list(warnings)
        if not self.errors:
            self.errors = [f"{source}: invalid configuration"]
        super().__init__("\n".join(self.errors))


def format_path(loc: Iterable[str | int]) -> str:
    """``("nvidia", "migProfileAllowlist", 0, "profiles")`` -> ``nvidia.migProfileAllowlist[0].profiles``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "<top level>"


_MAX_VALUE_CHARS = 80


def format_value(value: Any) -> str:
    """Render a user-supplied value the way it would appear in YAML/JSON (compact, truncated)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
        except (TypeError, ValueError):  # pragma: no cover - defensive
            text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text
