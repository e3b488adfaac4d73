"""How the in-container enforcement switches are read, shared by the webhook and the device plugin.

Both must judge a container's env the same way: the webhook denies what the device plugin would
otherwise honour.
"""

from __future__ import annotations

from typing import Final

#: Go ``strconv.ParseBool`` spellings of false: HAMi's device plugin mounts the shim unless
#: ``CUDA_DISABLE_CONTROL`` parses true, so only these leave enforcement on.
FALSE_SPELLINGS: Final = frozenset({"", "0", "f", "false"})


def disables_control(value: str) -> bool:
    """Does this literal ``CUDA_DISABLE_CONTROL`` value switch enforcement off?"""
    return value.strip().lower() not in FALSE_SPELLINGS


def disables_core_limit(value: str) -> bool:
    """Does this literal ``GPU_CORE_UTILIZATION_POLICY`` value switch the core limit off?"""
    return value.strip().lower() == "disable"
