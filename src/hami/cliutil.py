"""Small pieces every ``hami`` command shares: address parsing and clean fatal errors."""

from __future__ import annotations

import click


def parse_bind(bind: str, param_hint: str = "--bind") -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``; a bad value is a usage error naming the flag."""
    host, sep, port_s = bind.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise click.BadParameter(f"{bind!r} is not host:port", param_hint=param_hint)
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_s)
