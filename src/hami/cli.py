"""The `hami` command line: thin entry points that parse flags, build objects and run them."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="hami")
def main() -> None:
    """hami: share accelerators between Kubernetes containers safely."""
