"""A real browser for the web UI's tests and screenshots: Playwright driving Debian's chromium.

Playwright's own browser downloads are never used (no network): :func:`chromium` finds Debian's
``chromium`` (``hack/ensure-debian-tool.sh chromium chromium`` installs it) and hands its path to
Playwright as ``executable_path``. A missing chromium or Playwright skips a test — or fails it
under ``HAMI_REQUIRE_ALL=1`` (:func:`hami.testing.prereq.missing`).

:class:`Watch` records what must never happen on a page: console errors, uncaught page errors and
dialogs (an injected ``alert`` would open one; dialogs are dismissed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hami.testing.prereq import missing

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

#: the smallest laptop screen the pages must work on (issue 12)
WIDTH, HEIGHT = 1366, 768
INSTALL_HINT = "install Debian's chromium: hack/ensure-debian-tool.sh chromium chromium"


def chromium_path() -> str | None:
    return os.environ.get("HAMI_CHROMIUM") or shutil.which("chromium")


def require_chromium() -> str:
    """Debian's chromium, or skip/fail the running test (pytest only)."""
    path = chromium_path()
    if path is None:
        missing(f"no chromium on PATH; {INSTALL_HINT}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing("the playwright package is missing; run `make venv`")
    return path


@asynccontextmanager
async def chromium(path: str) -> AsyncIterator[Browser]:
    """A headless chromium at ``path`` (``--no-sandbox``: the tests run as root)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=["--no-sandbox"], headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watch:
    """Console errors, page errors and dialogs seen on a page since :meth:`attach`."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("dialog", self._dialog)
        return page

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.console_errors.append(f"{msg.text} ({msg.location})")

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    @property
    def problems(self) -> list[str]:
        return [*self.console_errors, *self.page_errors, *(f"dialog {d}" for d in self.dialogs)]


async def new_page(browser: Browser, watch: Watch) -> Page:
    """A page at 1366x768 with ``watch`` attached."""
    context = await browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    return watch.attach(await context.new_page())
