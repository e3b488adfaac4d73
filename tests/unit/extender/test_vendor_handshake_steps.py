"""HAMi's handshake rule (``device.CheckHealth`` / ``NodeCleanUp``), value by value, and which
annotations one node gets (the API side: tests/integration/test_vendor_handshake.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from hami.config import parse_device_config
from hami.devices.registry import default_registry
from hami.extender.handshake import HandshakeWriter, handshake_step
from hami.protocol.handshake import encode_requesting

NOW = datetime(2026, 12, 7, 20, 0, 0)


@pytest.mark.parametrize(
    ("value", "allocatable", "step"),
    [
        (None, True, "request"),
        ("Reported 2026-12-07 19:59:59.1 +0000 UTC m=+1.2", True, "request"),
        ("Deleted_2026-12-07 19:00:00", False, "request"),  # older HAMi's cleanup mark
        ("garbage", False, "request"),
        (encode_requesting(NOW - timedelta(seconds=59)), False, None),  # the plugin has 60 s
        (encode_requesting(NOW - timedelta(seconds=61)), True, None),  # still allocatable: healthy
        (encode_requesting(NOW - timedelta(seconds=61)), False, "cleanup"),  # the plugin is gone
        ("Requesting_not-a-time", False, None),  # HAMi: unreadable counts as fresh
    ],
)
def test_handshake_step(value: str | None, allocatable: bool, step: str | None) -> None:
    assert handshake_step(value, NOW, allocatable) == step


def test_a_node_gets_one_value_per_registered_handshaking_vendor() -> None:
    cfg, _ = parse_device_config("hygon: {}\nvastai: {}\nenflame: {}\namd: {}\n")
    writer = HandshakeWriter(None, default_registry(cfg), list, clock=lambda: NOW)  # type: ignore[arg-type]
    # AMD and Enflame have no handshake, NVIDIA's plugin (hami's own) none either
    assert [k for k, _, _ in writer.vendors] == ["hami.io/node-handshake-dcu", "hami.io/node-handshake-va"]
    node = {
        "metadata": {
            "name": "n",
            "annotations": {
                "hami.io/node-dcu-register": "DCU-0,4,16384,100,DCU-Z100,0,true:",
                "hami.io/node-handshake-dcu": encode_requesting(NOW - timedelta(minutes=5)),
            },
        },
        "status": {"allocatable": {"hygon.com/dcunum": "0"}},
    }
    # Hygon's plugin is gone; Vastai registers nothing here, so it gets no handshake
    assert writer.node_patch(node) == {"hami.io/node-handshake-dcu": None}
    node["status"]["allocatable"]["hygon.com/dcunum"] = "4"  # type: ignore[index]
    assert writer.node_patch(node) == {}
    node["metadata"]["annotations"]["hami.io/node-handshake-dcu"] = "Reported now"  # type: ignore[index]
    assert writer.node_patch(node) == {"hami.io/node-handshake-dcu": "Requesting_2026-12-07 20:00:00"}
