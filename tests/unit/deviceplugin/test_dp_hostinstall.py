"""`hami install-host`: libvgpu.so and ld.so.preload written atomically and idempotently on tmp dirs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hami.cli import main
from hami.deviceplugin.hostinstall import HostInstallError, install_host, preload_contents

LIB_V1 = b"\x7fELF" + b"\x01" * 5000
LIB_V2 = b"\x7fELF" + b"\x02" * 7000


def library(tmp_path: Path, data: bytes = LIB_V1, name: str = "libvgpu.so") -> Path:
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return src


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_fresh_install_writes_library_and_preload(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    result = install_host(str(hook), library(tmp_path))
    vgpu = hook / "vgpu"
    assert (result.library, result.preload) == (vgpu / "libvgpu.so", vgpu / "ld.so.preload")
    assert (result.library_written, result.preload_written) == (True, True)
    assert result.library.read_bytes() == LIB_V1
    # the preload names the library where the device plugin mounts it inside the container
    assert result.preload.read_text() == f"{hook}/vgpu/libvgpu.so\n"
    assert (mode(result.library), mode(result.preload), mode(vgpu)) == (0o755, 0o644, 0o755)
    assert leftovers(vgpu) == []


def test_preload_contents_ignore_trailing_slash() -> None:
    assert (
        preload_contents("/usr/local/") == preload_contents("/usr/local") == b"/usr/local/vgpu/libvgpu.so\n"
    )


def test_second_install_rewrites_nothing(tmp_path: Path) -> None:
    hook = str(tmp_path)
    src = library(tmp_path)
    first = install_host(hook, src)
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (first.library, first.preload)]
    again = install_host(hook, src)
    assert (again.library_written, again.preload_written) == (False, False)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (again.library, again.preload)] == before


def test_wrong_mode_is_fixed_in_place(tmp_path: Path) -> None:
    first = install_host(str(tmp_path), library(tmp_path))
    first.library.chmod(0o600)
    first.preload.chmod(0o600)
    inode = first.library.stat().st_ino
    again = install_host(str(tmp_path), library(tmp_path))
    assert (again.library_written, again.preload_written) == (False, False)
    assert (mode(again.library), mode(again.preload)) == (0o755, 0o644)
    assert again.library.stat().st_ino == inode


def test_update_replaces_the_file_a_reader_holds_stays_whole(tmp_path: Path) -> None:
    hook = str(tmp_path)
    first = install_host(hook, library(tmp_path))
    # a container that mounted the old library keeps reading the complete old file
    with first.library.open("rb") as held:
        old_inode = os.fstat(held.fileno()).st_ino
        result = install_host(hook, library(tmp_path, LIB_V2))
        assert held.read() == LIB_V1
    assert (result.library_written, result.preload_written) == (True, False)
    assert result.library.read_bytes() == LIB_V2
    assert result.library.stat().st_ino != old_inode
    assert mode(result.library) == 0o755
    assert leftovers(result.library.parent) == []


def test_same_size_different_bytes_is_rewritten(tmp_path: Path) -> None:
    install_host(str(tmp_path), library(tmp_path))
    changed = LIB_V1[:-1] + b"\x09"
    result = install_host(str(tmp_path), library(tmp_path, changed))
    assert result.library_written
    assert result.library.read_bytes() == changed


def test_a_stale_preload_is_corrected(tmp_path: Path) -> None:
    first = install_host(str(tmp_path), library(tmp_path))
    first.preload.write_text("/somewhere/else/libvgpu.so\n")
    result = install_host(str(tmp_path), library(tmp_path))
    assert (result.library_written, result.preload_written) == (False, True)
    assert result.preload.read_bytes() == preload_contents(str(tmp_path))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("relative-hook", "--hook-path: must be an absolute path, got 'usr/local'"),
        ("missing-library", "no such file"),
        ("not-elf", "not an ELF shared library"),
        ("library-is-dir", "is a directory, expected libvgpu.so"),
        ("vgpu-is-file", "/vgpu: "),
        ("target-is-dir", "/vgpu/libvgpu.so: cannot write: Is a directory"),
    ],
)
def test_errors_name_the_path_and_reason(tmp_path: Path, case: str, message: str) -> None:
    hook = str(tmp_path / "hook")
    (tmp_path / "hook").mkdir()
    src = library(tmp_path)
    if case == "relative-hook":
        hook = "usr/local"
    elif case == "missing-library":
        src = tmp_path / "nope.so"
    elif case == "not-elf":
        src = library(tmp_path, b"#!/bin/sh\n", name="script.so")
    elif case == "library-is-dir":
        src = tmp_path / "src"
    elif case == "vgpu-is-file":
        (tmp_path / "hook" / "vgpu").write_text("in the way")
    elif case == "target-is-dir":
        (tmp_path / "hook" / "vgpu" / "libvgpu.so").mkdir(parents=True)
    with pytest.raises(HostInstallError, match=message.replace(".", r"\.")) as err:
        install_host(hook, src)
    if case in ("missing-library", "library-is-dir"):
        assert f"--library {src}" in str(err.value)
    vgpu = tmp_path / "hook" / "vgpu"
    if vgpu.is_dir():
        assert leftovers(vgpu) == []


def test_cli_reports_written_then_unchanged(tmp_path: Path) -> None:
    src = library(tmp_path)
    args = ["install-host", "--hook-path", str(tmp_path), "--library", str(src)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [
        f"{tmp_path}/vgpu/libvgpu.so: written",
        f"{tmp_path}/vgpu/ld.so.preload: written",
    ]
    second = CliRunner().invoke(main, args)
    assert second.output.splitlines() == [
        f"{tmp_path}/vgpu/libvgpu.so: unchanged",
        f"{tmp_path}/vgpu/ld.so.preload: unchanged",
    ]


def test_cli_error_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["install-host", "--hook-path", str(tmp_path), "--library", str(tmp_path / "missing.so")]
    )
    assert result.exit_code == 1
    assert f"error: --library {tmp_path / 'missing.so'}: no such file" in result.output
