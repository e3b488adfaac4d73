"""A test whose prerequisite is missing: a tool, a kernel feature, the control plane's binaries.

Run by hand, such a test is skipped with the reason. ``make test`` runs every tier and sets
``HAMI_REQUIRE_ALL=1``: there a missing prerequisite fails the test with the reason, which says
what to install, so a broken set-up never passes as a skip. ``HAMI_REQUIRE_INTEGRATION=1`` (set by
``make integration`` too) requires only the control plane's prerequisites. A failure of this
repository's own code (a C file that does not compile) is never a missing prerequisite: fail it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_ALL", "REQUIRE_INTEGRATION", "missing"]

REQUIRE_ALL = "HAMI_REQUIRE_ALL"
REQUIRE_INTEGRATION = "HAMI_REQUIRE_INTEGRATION"


def missing(reason: str, *, integration: bool = False) -> NoReturn:
    """Skip the running test for ``reason`` — or fail it where the prerequisite is required
    (``integration``: the control plane's binaries, also required by HAMI_REQUIRE_INTEGRATION)."""
    for name in (REQUIRE_ALL, REQUIRE_INTEGRATION) if integration else (REQUIRE_ALL,):
        if os.environ.get(name) == "1":
            pytest.fail(f"{name}=1 but {reason}", pytrace=False)
    pytest.skip(reason)
