"""Open a report in a real headless Chromium (Debian's), offline, and read back what it drew.

Playwright drives the browser; its context is offline and every request that is not the file
itself is aborted and recorded, so a report that needs the network shows up as requests here and
as charts not drawn. `make test` installs Chromium where it is absent; a test skips without it,
unless MLBENCH_REQUIRE_BROWSER is set (CI sets it), where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# every Plotly div: whether Plotly drew it (an SVG root and a full layout) and how many traces it holds
READ_CHARTS = """els => els.map(e => ({
  id: e.id,
  drawn: !!e.querySelector('svg.main-svg') && e._fullLayout !== undefined,
  traces: (e.data || []).length,
}))"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MLBENCH_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (MLBENCH_REQUIRE_BROWSER) but not installed: run `make browser`")
        pytest.skip("Chromium not installed (`make browser` installs Debian's chromium)")
    return path


def open_report(path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Load `path` offline; return the charts found, script errors, console errors and blocked requests."""
    exe = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    console: list[str] = []
    requests: list[str] = []

    def route(r: Any) -> None:
        if r.request.url == path.resolve().as_uri():
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=FLAGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.route("**/*", route)
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_timeout(500)  # Plotly draws in the load handler; let it settle
            charts = page.eval_on_selector_all(".plotly-graph-div", READ_CHARTS)
            empty = page.eval_on_selector_all("p.empty", "els => els.map(e => e.textContent)")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"charts": charts, "empty": empty, "errors": errors, "console": console, "requests": requests}
