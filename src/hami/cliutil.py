"""What every ``hami`` command shares: the common flags, logging, device config, signals, errors.

Every service is a ``runner`` module (settings dataclass + the object that runs) and a thin ``cli``
module (flags -> settings -> runner). The flags that mean the same on every service are declared
here once, so they are spelled the same everywhere:

* ``--bind`` host:port to serve on (HAMi's ``--http_bind``), ``--metrics-bind`` host:port of the
  metrics and probes (HAMi's ``--metrics-bind-address``), ``--cert-file``/``--key-file`` (HAMi's
  ``--cert_file``/``--key_file``);
* ``--device-config`` the device-config.yaml (HAMi's ``--device-config-file``) and
  ``--scheduler-name`` (overrides its ``hami.schedulerName``, HAMi's flag of that name);
* ``--node-scheduler-policy``/``--gpu-scheduler-policy`` (HAMi's names; ``hami simulate`` shows
  them as ``--node-policy``/``--gpu-policy``);
* ``--kubeconfig`` and ``--log-level``.

HAMi's spellings are accepted as hidden aliases (not shown in ``--help``), so a HAMi manifest's
arguments can point at hami.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import click
from pydantic import ValidationError

from hami.config import ConfigError, DeviceConfig, load_device_config

if TYPE_CHECKING:
    from hami.kube.config import KubeConfig

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NODE_POLICIES = ("binpack", "spread")
GPU_POLICIES = ("binpack", "spread", "topology-aware")


# ------------------------------------------------------------------------------------ options
class AliasedOption(click.Option):
    """An option that also accepts other spellings (``aliases``) without showing them in help or errors."""

    def __init__(self, *args: Any, aliases: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = tuple(aliases)

    @contextlib.contextmanager
    def _shown_names(self) -> Iterator[None]:
        opts = self.opts
        self.opts = [o for o in opts if o not in self.aliases]
        try:
            yield
        finally:
            self.opts = opts

    def get_help_spec(self, ctx: click.Context) -> str:
        with self._shown_names():
            return super().get_help_spec(ctx)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        with self._shown_names():
            return super().get_error_hint(ctx)


def option(*names: str, aliases: Sequence[str] = (), **attrs: Any) -> Decorator:
    """``click.option`` whose ``aliases`` (other spellings, e.g. HAMi's) are accepted but hidden.

    ``names`` are the shown flags and, last, the parameter name when it differs from the flag.
    """
    flags = [n for n in names if n.startswith("-")]
    dest = [n for n in names if not n.startswith("-")]
    return click.option(*flags, *aliases, *dest, cls=AliasedOption, aliases=aliases, **attrs)


def bind_option(default: str, help: str) -> Decorator:
    return option("--bind", aliases=("--http_bind",), default=default, show_default=True, help=help)


def metrics_bind_option(default: str, help: str) -> Decorator:
    return option(
        "--metrics-bind", aliases=("--metrics-bind-address",), default=default, show_default=True, help=help
    )


def tls_options(cert_help: str, key_help: str) -> Decorator:
    file = click.Path(exists=True, dir_okay=False)
    cert = option("--cert-file", aliases=("--cert_file",), type=file, help=cert_help)
    key = option("--key-file", aliases=("--key_file",), type=file, help=key_help)
    return lambda f: cert(key(f))


def device_config_option(
    dest: str = "device_config", *, shown: str = "--device-config", help: str = "device-config.yaml"
) -> Decorator:
    """The device-config.yaml path, shown as ``shown``; ``--device-config`` and HAMi's
    ``--device-config-file`` are accepted everywhere."""
    aliases = tuple(s for s in ("--device-config", "--device-config-file") if s != shown)
    return option(shown, dest, aliases=aliases, type=click.Path(dir_okay=False), help=help)


def device_config_options(help: str = "device-config.yaml") -> Decorator:
    """``--device-config`` and ``--scheduler-name``: read together by :func:`device_config`."""
    path = device_config_option(help=help)
    name = option(
        "--scheduler-name",
        default=None,
        help="schedulerName of the pods hami places (default: the device config's hami.schedulerName)",
    )
    return lambda f: path(name(f))


_OTHER_SPELLING = {
    "--node-policy": "--node-scheduler-policy",
    "--node-scheduler-policy": "--node-policy",
    "--gpu-policy": "--gpu-scheduler-policy",
    "--gpu-scheduler-policy": "--gpu-policy",
}


def policy_options(node: str, gpu: str, *, help: tuple[str, str]) -> Decorator:
    """The default node and card policies, shown as ``node``/``gpu``.

    Both spellings work everywhere: HAMi's ``--node-scheduler-policy``/``--gpu-scheduler-policy``
    and the short ``--node-policy``/``--gpu-policy``; the one not shown is a hidden alias.
    """
    node_opt = option(
        node, "node_policy", aliases=(_OTHER_SPELLING[node],), type=click.Choice(NODE_POLICIES), help=help[0]
    )
    gpu_opt = option(
        gpu, "gpu_policy", aliases=(_OTHER_SPELLING[gpu],), type=click.Choice(GPU_POLICIES), help=help[1]
    )
    return lambda f: node_opt(gpu_opt(f))


def kubeconfig_option(help: str, **attrs: Any) -> Decorator:
    return option("--kubeconfig", type=click.Path(dir_okay=False), help=help, **attrs)


def log_level_option(default: str | None) -> Decorator:
    return option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"], case_sensitive=False),
        default=default,
        show_default=default is not None,
        help="log level",
    )


# ------------------------------------------------------------------------------------ values
def parse_bind(bind: str, param_hint: str = "--bind") -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``; a bad value is a usage error naming the flag."""
    host, sep, port_s = bind.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise click.BadParameter(f"{bind!r} is not host:port", param_hint=param_hint)
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_s)


class CommandError(click.ClickException):
    """A clean fatal error: ``Error: <message>`` on stderr, no traceback, status 1."""


class InputError(CommandError):
    """A bad input file, refused like a usage error: status 2."""

    exit_code = 2


def device_config(
    path: str | None, scheduler_name: str | None = None, *, error: type[CommandError] = CommandError
) -> DeviceConfig:
    """device-config.yaml (the defaults without a path), warnings on stderr, ``--scheduler-name`` applied.

    A bad file is a :class:`CommandError` naming the file, key and value.
    """
    config = DeviceConfig.default()
    if path is not None:
        try:
            config, warnings = load_device_config(path)
        except ConfigError as exc:
            raise error(str(exc)) from exc
        from hami.devices.registry import section_warnings

        for w in [*warnings, *section_warnings(config, source=path)]:
            click.echo(f"warning: {w}", err=True)
    if scheduler_name is not None:
        section = config.hami
        try:
            section = type(section).model_validate({**section.model_dump(), "scheduler_name": scheduler_name})
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise click.BadParameter(f"{scheduler_name!r}: {msg}", param_hint="--scheduler-name") from None
        config = config.model_copy(update={"hami": section})
    return config


# ------------------------------------------------------------------------------------ running
def setup_logging(level: str | int) -> None:
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=LOG_FORMAT)


def on_stop_signals(callback: Callable[[], object]) -> None:
    """Call ``callback`` on SIGTERM and SIGINT (in the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, callback)


def run_until_stopped(
    main: Callable[[], Coroutine[Any, Any, None]], *, errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Run ``main()`` until it returns or SIGTERM/SIGINT cancels it (a clean stop, status 0).

    An exception of ``errors`` (a port in use, an API server that never answered) is one line on
    stderr and status 1.
    """

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        on_stop_signals(task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main()

    try:
        asyncio.run(guarded())
    except errors as exc:
        raise CommandError(str(exc) or type(exc).__name__) from exc


class Service(Protocol):
    """A service runner: ``run_forever`` starts it, serves until cancelled and stops it."""

    async def run_forever(self) -> None: ...


async def serve_until_cancelled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """A service's ``run_forever``: start, serve until cancelled; `stop` runs in any case, also
    when `start` fails midway."""
    try:
        await start()
        await asyncio.Event().wait()
    finally:
        await stop()


def run_kube_service(kubeconfig: str | None, build: Callable[[KubeConfig], Service]) -> None:
    """Load the API credentials (a clean error saying why they cannot be), build the service with
    them and run it until SIGTERM/SIGINT (see :func:`run_until_stopped`)."""
    import hami.kube.config
    from hami.kube.errors import KubeError

    try:
        kube_config = hami.kube.config.load_config(kubeconfig)
    except hami.kube.config.KubeConfigError as exc:
        raise click.ClickException(f"cannot reach the Kubernetes API: {exc}") from exc
    # a port in use, an API server that never answered the first list, a refused credential
    run_until_stopped(build(kube_config).run_forever, errors=(OSError, TimeoutError, KubeError))
