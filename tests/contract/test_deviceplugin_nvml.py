"""The NVML source end to end, against the repository's fake libnvidia-ml.so.1 (no GPU needed).

Compiles native/fake/fakenvml.c into a temp dir, runs `hami device-plugin` (NVML source, the
default) with LD_LIBRARY_PATH pointing at it, and checks what the fake kubelet receives. The fake
library implements only the basic queries (count, UUID, name, memory); everything else the source
asks for (PCI, MIG, topology, events) is missing and must degrade gracefully.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hami.testing.kubelet import FakeKubelet
from hami.testing.prereq import missing

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "native" / "fake"
RES = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def fake_nvml() -> Iterator[Path]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        missing("no C compiler to build native/fake/fakenvml.c (apt-get install gcc)")
    out = Path(tempfile.mkdtemp(prefix="fnvml"))
    proc = subprocess.run(
        [
            cc,
            "-O1",
            "-fPIC",
            "-shared",
            f"-I{ROOT / 'native' / 'include'}",
            f"-I{FAKE}",
            "-Wl,-soname,libnvidia-ml.so.1",
            "-o",
            str(out / "libnvidia-ml.so.1"),
            str(FAKE / "fakenvml.c"),
            str(FAKE / "fake_state.c"),
            "-lpthread",
        ],
        capture_output=True,
        text=True,
    )
    # this repository's own code: a build failure is a regression, never a skip
    assert proc.returncode == 0, (
        f"the fake NVML (native/fake/fakenvml.c) does not build:\n{proc.stderr[-2000:]}"
    )
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_nvml_source_through_the_cli(fake_nvml: Path) -> None:
    plugin_dir = Path(tempfile.mkdtemp(prefix="hdp", dir="/tmp"))
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml),
        "FAKECUDA_DEVICES": "2",
        "FAKECUDA_TOTAL_MEM": "8g",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FAKECUDA_STATE", None)

    async def scenario() -> None:
        async with FakeKubelet(plugin_dir) as k:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from hami.deviceplugin.cli import device_plugin; device_plugin()",
                "--standalone",
                "--plugin-dir",
                str(plugin_dir),
                "--node-name",
                "n1",
                "--device-split-count",
                "2",
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                await k.wait_for(lambda: len(k.devices.get(RES, {})) == 4, timeout=20)
                uuids = sorted({i.rsplit("-", 1)[0] for i in k.devices[RES]})
                assert len(uuids) == 2 and all(u.startswith("GPU-") for u in uuids)
                assert set(k.devices[RES].values()) == {"Healthy"}
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(proc.wait(), 10)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            out = (await proc.stdout.read()).decode() if proc.stdout else ""
            assert rc == 0, out
            assert not (plugin_dir / "nvidia-gpu.sock").exists(), out

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)


def test_nvml_source_inventory(fake_nvml: Path) -> None:
    code = (
        "from hami.deviceplugin.sources.nvml import NvmlSource\n"
        "from hami.deviceplugin.settings import NodeSettings, build_inventory\n"
        "s = NvmlSource()\n"
        "inv = build_inventory(s, NodeSettings(split_count=3, memory_scaling=2))\n"
        "print([(d.card.index, d.count, d.devmem, d.type, d.healthy) for d in inv])\n"
        "print(s.links(), s.mig_profiles(inv[0].uuid), s.pair_scores())\n"
    )
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml),
        "FAKECUDA_DEVICES": "2",
        "FAKECUDA_TOTAL_MEM": "8g",
    }
    env.pop("FAKECUDA_STATE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == (
        "[(0, 3, 16384, 'NVIDIA-Fake GPU 0', True), (1, 3, 16384, 'NVIDIA-Fake GPU 1', True)]"
    )
    assert lines[1].startswith("[] [] {")  # no topology/MIG data in the fake: empty, not an error
