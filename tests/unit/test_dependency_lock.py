"""uv.lock: what `make demo` installs holds no development tool, and the committed gRPC code matches
the locked generator and runtime.

`make` installs with ``uv sync --locked`` (which refuses a lock that disagrees with pyproject.toml);
these tests check what that cannot: the runtime closure and the generated-code versions.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PACKAGES: dict[str, dict[str, Any]] = {p["name"]: p for p in LOCK["package"]}
DEV_TOOLS = {
    "pytest",
    "mypy",
    "ruff",
    "grpcio-tools",
    "hypothesis",
    "nvidia-cuda-runtime-cu12",
    "setuptools",
    "playwright",
}


def _closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [d["name"] for d in PACKAGES[name].get("dependencies", [])]
    return seen


def test_every_locked_package_has_one_exact_version() -> None:
    names = [p["name"] for p in LOCK["package"]]
    assert len(names) == len(set(names))
    for p in LOCK["package"]:
        assert re.fullmatch(r"\d+(\.\d+)*([a-z0-9.+-]*)", p["version"]), p


def test_runtime_closure_has_no_development_tool() -> None:
    runtime = _closure([d["name"] for d in PACKAGES["hami"]["dependencies"]])
    assert not runtime & DEV_TOOLS, runtime & DEV_TOOLS
    dev = {d["name"] for d in PACKAGES["hami"]["dev-dependencies"]["dev"]}
    assert {"pytest", "grpcio-tools", "nvidia-cuda-runtime-cu12"} <= dev


def test_generated_grpc_code_matches_the_locked_generator_and_runtime() -> None:
    api = ROOT / "src" / "hami" / "deviceplugin" / "api"
    generated_grpc = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", (api / "api_pb2_grpc.py").read_text())
    generated_pb = re.search(r"Protobuf Python Version: (\S+)", (api / "api_pb2.py").read_text())
    assert generated_grpc and generated_pb
    assert PACKAGES["grpcio-tools"]["version"] == generated_grpc.group(1)

    def vt(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:3])

    # the generated modules refuse older runtimes at import
    assert vt(PACKAGES["grpcio"]["version"]) >= vt(generated_grpc.group(1))
    assert vt(PACKAGES["protobuf"]["version"]) >= vt(generated_pb.group(1))
    assert vt(PACKAGES["protobuf"]["version"])[0] == vt(generated_pb.group(1))[0]
