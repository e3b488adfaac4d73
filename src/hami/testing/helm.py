"""Run the helm binary (built by ``hack/build-helm.sh``) on a chart: lint and render.

helm is ``$HAMI_HELM`` when set, else ``~/.cache/hami/helm-<version>/helm``, else the one on ``PATH``.
Every call runs with private ``HELM_{CACHE,CONFIG,DATA}_HOME`` directories, so nothing outside
the call's temporary directory is read or written, and no repository or cluster is contacted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["HELM_VERSION", "Helm", "HelmError", "HelmMissingError", "find_helm"]

#: The version hack/build-helm.sh builds.
HELM_VERSION = "v4.3.2"


class HelmError(RuntimeError):
    """helm exited non-zero; the message holds its stderr."""


class HelmMissingError(HelmError):
    """No helm binary was found."""


def find_helm(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The helm binary to use; raises :class:`HelmMissingError` naming the places looked at.

    ``explicit`` or ``$HAMI_HELM``, when given, is the only place looked at.
    """
    named = os.fspath(explicit) if explicit else os.environ.get("HAMI_HELM", "")
    if named:
        candidates = [named]
    else:
        cache = Path(os.environ.get("HAMI_CACHE_DIR", Path.home() / ".cache" / "hami"))
        candidates = [str(cache / f"helm-{HELM_VERSION}" / "helm")]
        on_path = shutil.which("helm")
        if on_path:
            candidates.append(on_path)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return Path(c)
    raise HelmMissingError(
        f"helm not found (tried {', '.join(candidates)}); build it with hack/build-helm.sh or set HAMI_HELM"
    )


class Helm:
    """One helm binary. :meth:`render` and :meth:`lint` never touch a cluster; :meth:`release`
    runs ``install``/``upgrade``/``uninstall`` against the cluster of a kubeconfig."""

    def __init__(self, binary: str | os.PathLike[str], *, kube_version: str = "1.34.4") -> None:
        self.binary = Path(binary)
        self.kube_version = kube_version

    def _run(
        self, args: Sequence[str], values: Mapping[str, Any] | None, kubeconfig: str | None = None
    ) -> str:
        with tempfile.TemporaryDirectory(prefix="hami-helm-") as tmp:
            env = {
                **os.environ,
                "HELM_CACHE_HOME": f"{tmp}/cache",
                "HELM_CONFIG_HOME": f"{tmp}/config",
                "HELM_DATA_HOME": f"{tmp}/data",
            }
            if kubeconfig is not None:
                env["KUBECONFIG"] = kubeconfig
            argv = [str(self.binary), *args]
            if values is not None:
                vfile = Path(tmp) / "values.yaml"
                vfile.write_text(yaml.safe_dump(dict(values)))
                argv += ["--values", str(vfile)]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise HelmError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def lint(self, chart: str | os.PathLike[str], values: Mapping[str, Any] | None = None) -> str:
        """``helm lint --strict`` (warnings fail too); returns its report."""
        return self._run(["lint", "--strict", os.fspath(chart)], values)

    def render(
        self,
        chart: str | os.PathLike[str],
        *,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """``helm template``: every rendered object, in helm's install order (empty documents dropped)."""
        out = self._run(
            [
                "template",
                release,
                os.fspath(chart),
                "--namespace",
                namespace,
                "--kube-version",
                self.kube_version,
            ],
            values,
        )
        return [d for d in yaml.safe_load_all(out) if d]

    def release(
        self,
        command: str,
        release: str,
        *,
        namespace: str,
        kubeconfig: str | os.PathLike[str],
        chart: str | os.PathLike[str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> str:
        """``helm install|upgrade <release> <chart>`` or ``helm uninstall <release>`` (no waiting
        for workloads to become ready); returns helm's output."""
        args = [command, release]
        if command in {"install", "upgrade"}:
            if chart is None:
                raise ValueError(f"helm {command} needs a chart")
            args.append(os.fspath(chart))
        args += ["--namespace", namespace]
        if command == "install":
            args.append("--create-namespace")
        return self._run(args, values, os.fspath(kubeconfig))
