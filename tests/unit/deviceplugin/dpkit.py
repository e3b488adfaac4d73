"""The fake node the device plugin's Allocate tests share: two MIG-capable A100s and a T4."""

from __future__ import annotations

from typing import Any

A, B, C = "GPU-aaaa", "GPU-bbbb", "GPU-cccc"

SPEC: dict[str, Any] = {
    "cards": [
        {"uuid": A, "model": "NVIDIA A100-SXM4-40GB", "memory": 40960, "mig": True, "mig_profiles": "a100"},
        {"uuid": B, "model": "NVIDIA A100-SXM4-40GB", "memory": 40960, "mig": True, "mig_profiles": "a100"},
        {"uuid": C, "model": "Tesla T4", "memory": 15360},
    ],
    "mig_profile_sets": {
        "a100": [
            {
                "name": "1g.5gb",
                "memory": 4864,
                "core": 13,
                "slices": 1,
                "placements": [[i, 1] for i in range(7)],
            },
            {"name": "3g.20gb", "memory": 19968, "core": 39, "slices": 3, "placements": [[0, 4], [4, 4]]},
        ]
    },
}
