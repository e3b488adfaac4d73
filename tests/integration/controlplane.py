"""Re-export of :mod:`hami.testing.controlplane` (the importable control-plane helper)."""

from hami.testing.controlplane import *  # noqa: F403
from hami.testing.controlplane import __all__ as __all__
