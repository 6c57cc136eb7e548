"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the report's browser tests and benchmark.

Playwright's own browser download is never used (it needs the internet); the system Chromium is launched with
the flags that keep it off the network.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """The Chromium binary: $SNAKESCOPE_CHROMIUM, else chromium on PATH."""
    return os.environ.get("SNAKESCOPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    if chromium_path() is None:
        return "no chromium on PATH (Debian package 'chromium'; .ci/run installs it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pyproject.toml extra 'test')"
    return None


def need_browser() -> None:
    """Skip the calling test without a browser, or fail it when CI said one must be there
    (``SNAKESCOPE_REQUIRE_BROWSER=1``, set by .ci/run after installing chromium)."""
    import pytest

    if reason := browser_missing():
        if os.environ.get("SNAKESCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser required by SNAKESCOPE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@contextmanager
def open_page(path: Path, width: int = 1400, height: int = 1000) -> Iterator[tuple[object, list[str]]]:
    """Open a local HTML file; yields (page, problems) where problems collects console errors, page errors and
    any request that left the file (a self-contained report makes none)."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("request", lambda r: problems.append(f"request: {r.url}")
                    if not r.url.startswith(("file:", "data:", "about:", "blob:")) else None)
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield page, problems
        finally:
            browser.close()
