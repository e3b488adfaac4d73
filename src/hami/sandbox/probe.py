"""What a GPU container in the sandbox runs to report what it sees: an unmodified CUDA driver-API
program (Python ctypes on ``libcuda.so.1``, as PyTorch loads it), so ``libvgpu.so`` — preloaded
through ``/etc/ld.so.preload`` — stands between it and the (simulated) driver exactly as on a GPU
node. It prints one JSON line: the cards and limits it was handed (environment), the device memory
the driver API reports, the results of allocating half of it and then more than what is left, the
memory free once half is held (what this container's own accounting says: a region shared with
another container would show that one's allocations too), the result of launching a few kernels
(the fake driver's ``busy`` kernel, 1 ms each: libvgpu records the container's last launch), and
where its usage region lives.

:data:`KERNEL_LOOP` is the probe followed by a kernel loop: 1 ms kernels back to back (synchronised
every 10) for ``PROBE_LOOP_SECONDS`` (environment; unset: forever), then it prints
``{"loop_done": <launches>, "loop_rc": <first failure or 0>}`` and idles, holding its memory.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CUDA_OUT_OF_MEMORY", "KERNEL_LOOP", "PROBE", "report"]

#: CUresult of an allocation refused for lack of memory
CUDA_OUT_OF_MEMORY = 2

PROBE = """
import ctypes, json, os
env = os.environ
cards = env.get("NVIDIA_VISIBLE_DEVICES", "")
seen = {"cards": cards.split(",") if cards else [],
        "memory": [env[k] for k in sorted(env) if k.startswith("CUDA_DEVICE_MEMORY_LIMIT_")],
        "cores": env.get("CUDA_DEVICE_SM_LIMIT", ""),
        "region": env.get("CUDA_DEVICE_MEMORY_SHARED_CACHE", ""),
        "preload": open("/etc/ld.so.preload").read().strip() if os.path.exists("/etc/ld.so.preload") else ""}
try:
    cuda = ctypes.CDLL("libcuda.so.1")
    seen["cuInit"] = cuda.cuInit(0)
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    cuda.cuDeviceGet(ctypes.byref(dev), 0)
    seen["cuCtxCreate"] = cuda.cuCtxCreate_v2(ctypes.byref(ctx), ctypes.c_uint(0), dev)
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
    seen["total_mib"] = total.value >> 20
    a, b = ctypes.c_uint64(), ctypes.c_uint64()
    seen["alloc_half"] = cuda.cuMemAlloc_v2(ctypes.byref(a), ctypes.c_size_t(total.value // 2))
    cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
    seen["free_after_half_mib"] = free.value >> 20
    seen["alloc_beyond"] = cuda.cuMemAlloc_v2(ctypes.byref(b), ctypes.c_size_t(total.value // 2 + (1 << 20)))
    mod, fn, kns = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint64(1000000)
    cuda.cuModuleLoadData(ctypes.byref(mod), b"kernel busy")
    cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"busy")
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(kns), ctypes.c_void_p))
    launch = cuda.cuLaunchKernel
    launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    rcs = [launch(fn, 1, 1, 1, 1, 1, 1, 0, None, params, None) for _ in range(10)]
    seen["launch"] = next((rc for rc in rcs if rc), 0) or cuda.cuCtxSynchronize()
except OSError as exc:
    seen["driver"] = str(exc)
print(json.dumps(seen), flush=True)
"""


KERNEL_LOOP = (
    PROBE
    + """
import time
end = time.monotonic() + float(env.get("PROBE_LOOP_SECONDS") or "inf")
n, rc = 0, 0
while not rc and time.monotonic() < end:
    rc = launch(fn, 1, 1, 1, 1, 1, 1, 0, None, params, None)
    n += 1
    if n % 10 == 0:
        rc = rc or cuda.cuCtxSynchronize()
print(json.dumps({"loop_done": n, "loop_rc": rc}), flush=True)
time.sleep(10**6)
"""
)


def report(log: str) -> dict[str, Any]:
    """The probe's JSON line from a container log. The log also holds ``libvgpu.so``'s own
    messages (stderr), in any order relative to the report (stdout). ValueError when absent."""
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            out: dict[str, Any] = json.loads(line)
            return out
    raise ValueError(f"no probe report in the log: {log[-300:]!r}")
