"""The sandbox's simulated GPU driver on the "host": the fake ``libcuda.so.1`` /
``libnvidia-ml.so.1`` (``native/build/fake``) and, per node, the list of that node's cards the fake
NVML reports (``FAKECUDA_CARDS``, ``native/fake/fake_state.h``).

A real node's monitor reads the host driver's NVML; a sandbox node's reads the fake one, told the
node's cards by a file ``cards-<node>`` next to the libraries: the same cards, UUIDs, models, memory
and SM counts the device plugin's fake device source serves on that node (one YAML for the whole
cluster, ``nodes.<name>`` overriding per node), so host and scheduler series name the same cards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hami.deviceplugin.sources.fake import FakeSource

__all__ = ["CARDS_ENV", "DRIVER_LIBS", "DriverError", "card_list", "cards_file", "install_driver"]

#: the environment variable that names the card list (the fake driver reads it)
CARDS_ENV = "FAKECUDA_CARDS"
DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")


class DriverError(RuntimeError):
    """The fake driver cannot be installed (the message names the file and why)."""


def install_driver(source: Path, root: Path) -> None:
    """Copy the fake driver's libraries from ``source`` into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for lib in DRIVER_LIBS:
        if not (source / lib).is_file():
            raise DriverError(f"{source / lib}: missing (make -C native builds the fake driver)")
        shutil.copyfile(source / lib, root / lib)
        (root / lib).chmod(0o755)


def cards_file(root: Path, node: str) -> Path:
    """Where node ``node``'s card list lives under the driver root ``root``."""
    return root / f"cards-{node}"


def card_list(spec: dict[str, Any], node: str) -> str:
    """The fake NVML's card list for node ``node`` of the fake device source ``spec`` (parsed YAML):
    one card a line, ``<uuid>\\t<memory MiB>\\t<SM count>\\t<model>``, in index order.
    FakeSpecError (from the device source) when the spec is invalid."""
    source = FakeSource(spec, origin="fake node spec", node_name=node)
    lines = []
    for c in sorted(source.cards(), key=lambda c: c.index):
        fields = (c.uuid, str(c.memory_mib), str(c.sm_count), c.model)
        if any("\t" in f or "\n" in f for f in fields):
            raise DriverError(f"node {node}: card {c.uuid!r}: a tab or newline in {fields!r}")
        lines.append("\t".join(fields) + "\n")
    return "".join(lines)
