"""The monitor's NVML reader against the repository's fake libnvidia-ml.so.1 (same soname lookup)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from native_helpers import FAKE, ROOT, base_env

from hami.sandbox.driver import CARDS_ENV, card_list, cards_file

pytestmark = pytest.mark.native

SCRIPT = """
import dataclasses, json
from hami.monitor.cards import CardReader
r = CardReader()
print(json.dumps([dataclasses.asdict(c) for c in r.read()]))
r.close()
"""


def test_reads_every_card_of_the_fake_driver(native_build: object, tmp_path: object) -> None:
    env = {**base_env(), "LD_LIBRARY_PATH": str(FAKE), "FAKECUDA_DEVICES": "3", "FAKECUDA_TOTAL_MEM": "8g"}
    env["FAKECUDA_STATE"] = f"{tmp_path}/fake.state"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cards = json.loads(out.stdout)
    assert [(c["index"], c["uuid"]) for c in cards] == [
        (i, f"GPU-face0000-0000-0000-0000-0000000000{i:02x}") for i in range(3)
    ]
    for c in cards:
        assert c["memory_total"] == 8 << 30 and 0 <= c["memory_used"] <= c["memory_total"]
        assert c["utilization"] == 0.0 and c["memory_utilization"] == 0.0 and c["type"]


def test_a_sandbox_node_reads_its_own_cards(native_build: object, tmp_path: Path) -> None:
    """The card list the sandbox writes for a node (hami.sandbox.driver) is what the fake NVML
    reports to that node's monitor: the device source's UUIDs, models and memory, node by node."""
    spec = yaml.safe_load((ROOT / "examples" / "fake-sandbox.yaml").read_text())
    for node, want in (
        ("node1", [(f"GPU-fake-node1-{i}", "NVIDIA A100-SXM4-40GB", 40960) for i in range(4)]),
        (
            "node2",
            [
                ("GPU-fake-node2-0", "Tesla T4", 15360),
                ("GPU-fake-node2-1", "Tesla T4", 15360),
                ("GPU-fake-node2-2", "NVIDIA L4", 23034),
            ],
        ),
    ):
        cards_file(tmp_path, node).write_text(card_list(spec, node))
        env = {**base_env(), "LD_LIBRARY_PATH": str(FAKE), CARDS_ENV: str(cards_file(tmp_path, node))}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        cards = json.loads(out.stdout)
        assert [(c["uuid"], c["type"], c["memory_total"] >> 20) for c in cards] == want
        assert [c["index"] for c in cards] == list(range(len(want)))
