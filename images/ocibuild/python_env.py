"""/opt/hami: a virtual environment on Debian's /usr/bin/python3.11, filled from the locked wheels.

`install_locked` installs exactly the runtime packages of uv.lock (`uv export --frozen --no-dev`,
hash-checked, wheels only, for cp311 manylinux x86_64); `install_project` builds hami's own wheel with
the pinned build backend (images/build-constraints.txt) and installs it without dependencies.
Install-time leftovers that would tie the image to this machine (console scripts with this host's
interpreter path, `direct_url.json` naming the build directory) are removed along with their RECORD
lines; the one command, /opt/hami/bin/hami, is written here with the image's interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PREFIX = "opt/hami"
SITE = f"{PREFIX}/lib/python3.11/site-packages"
PYTHON = "/usr/bin/python3.11"
PLATFORM = ("--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_36")
#: build-time files of wheels that nothing imports at run time
DROP_SUFFIXES = (".pyx", ".pxd", ".pxi", ".c", ".h", ".cpp")
LAUNCHER = f"""#!/{PREFIX}/bin/python3.11
import sys

from hami.cli import main

if __name__ == "__main__":
    sys.exit(main())
"""


class PythonEnvError(Exception):
    """uv failed; the message carries the command and its error output."""


def uv_run(uv: Path, args: list[str], cwd: Path) -> str:
    """Run uv with the repository's environment; raise PythonEnvError with its stderr on failure."""
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    done = subprocess.run([str(uv), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PythonEnvError(f"uv {' '.join(args[:2])}: exit status {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def venv_skeleton(root: Path, python_version: str) -> None:
    """pyvenv.cfg and bin/python* pointing at Debian's interpreter, so sys.prefix is /opt/hami."""
    prefix = root / PREFIX
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    (prefix / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {python_version}\n"
    )
    os.symlink(PYTHON, prefix / "bin" / "python3.11")
    os.symlink("python3.11", prefix / "bin" / "python3")
    os.symlink("python3.11", prefix / "bin" / "python")


def install_locked(uv: Path, repo: Path, root: Path, work: Path) -> None:
    """Install uv.lock's runtime packages (no dev group, not hami itself) into root's site-packages."""
    requirements = work / "requirements.txt"
    requirements.write_text(
        uv_run(uv, ["export", "--frozen", "--no-dev", "--no-emit-project", "--no-header", "-q"], repo)
    )
    site = root / SITE
    uv_run(
        uv,
        [
            *("pip", "install", "-q", "--target", str(site), *PLATFORM, "--only-binary", ":all:"),
            *("--require-hashes", "--no-deps", "-r", str(requirements)),
        ],
        repo,
    )
    _tidy(site)


def install_project(uv: Path, repo: Path, root: Path, work: Path) -> None:
    """Build hami's wheel from `repo` and install it plus the /opt/hami/bin/hami launcher."""
    wheels = work / "wheel"
    uv_run(
        uv,
        [
            *("build", "--wheel", "-q", "--out-dir", str(wheels)),
            *(
                "--build-constraints",
                str(repo / "images" / "build-constraints.txt"),
                "--require-hashes",
                str(repo),
            ),
        ],
        repo,
    )
    [wheel] = sorted(wheels.glob("hami-*.whl"))
    site = root / SITE
    uv_run(uv, ["pip", "install", "-q", "--target", str(site), *PLATFORM, "--no-deps", str(wheel)], repo)
    _tidy(site)
    launcher = root / PREFIX / "bin" / "hami"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)


def _tidy(site: Path) -> None:
    """Drop host-specific install leftovers and build-only sources; keep RECORD consistent."""
    removed: set[str] = set()
    scripts = site / "bin"
    if scripts.is_dir():
        removed |= {f"bin/{p.name}" for p in scripts.iterdir()}
        shutil.rmtree(scripts)
    # a local wheel's install records its build path (direct_url.json) and install time (uv_cache.json)
    for leftover in [*site.glob("*.dist-info/direct_url.json"), *site.glob("*.dist-info/uv_cache.json")]:
        removed.add(leftover.relative_to(site).as_posix())
        leftover.unlink()
    for path in sorted(site.rglob("*")):
        if path.is_file() and path.suffix in DROP_SUFFIXES:
            removed.add(path.relative_to(site).as_posix())
            path.unlink()
    for cache in sorted(site.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for record in site.glob("*.dist-info/RECORD"):
        lines = record.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.split(",", 1)[0] not in removed]
        if kept != lines:
            record.write_text("".join(kept))
