"""`hami install-host`: install libvgpu.so and ld.so.preload on the node (device plugin init container)."""

from __future__ import annotations

import sys

import click

from hami.deviceplugin.hostinstall import (
    DEFAULT_HOOK_PATH,
    DEFAULT_LIBRARY,
    HostInstallError,
    install_host,
)


@click.command("install-host")
@click.option(
    "--hook-path",
    default=DEFAULT_HOOK_PATH,
    show_default=True,
    help="HOOK_PATH of the device plugin; files go to <hook-path>/vgpu, mounted at the same path.",
)
@click.option(
    "--library",
    default=DEFAULT_LIBRARY,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The libvgpu.so to install.",
)
def install_host_command(hook_path: str, library: str) -> None:
    """Copy libvgpu.so to <hook-path>/vgpu and write the ld.so.preload naming it (atomic, idempotent)."""
    try:
        result = install_host(hook_path, library)
    except HostInstallError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for path, written in ((result.library, result.library_written), (result.preload, result.preload_written)):
        click.echo(f"{path}: {'written' if written else 'unchanged'}")
