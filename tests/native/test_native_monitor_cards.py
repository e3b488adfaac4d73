"""The monitor's NVML reader against the repository's fake libnvidia-ml.so.1 (same soname lookup)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from native_helpers import FAKE, base_env

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
