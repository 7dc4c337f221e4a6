"""RESULTS.md's charts as static SVG and PNG images, rendered from the report's own Plotly figures by
kaleido in a Chrome or Chromium it finds. A chart that cannot be rendered (no browser, no kaleido)
gets the sentence saying why, which RESULTS.md prints in place of its image."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from mlbench.present import charts
from mlbench.results.store import atomic_write

FORMATS = ("svg", "png")
IMAGE_WIDTH = 1100  # layout pixels of a static chart; the PNG is drawn at PNG_SCALE times that
PNG_SCALE = 2
RENDER_TIMEOUT_S = 60  # per image
IMAGES_ENV = "MLBENCH_CHART_IMAGES"  # "0": RESULTS.md without images (it says so), e.g. in tests
BROWSER_HINT = "`make browser` installs Debian's chromium; BROWSER_PATH names another Chrome or Chromium"


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The Chrome or Chromium to render with: BROWSER_PATH where set, else the first one on PATH."""
    given = os.environ.get("BROWSER_PATH")
    if given:
        return given if os.access(given, os.X_OK) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def static_figure(chart: charts.Chart) -> go.Figure:
    """The chart's own figure with its title on it (a static image stands alone), at the image width."""
    fig = go.Figure(chart.figure)
    top = (fig.layout.margin.t or 40) + 80
    plot_px = max(100, (fig.layout.height or 420) - top - (fig.layout.margin.b or 60))
    # the legend in a row above the plot (below it, it covered the long rotated cell labels), and above
    # the subplots' titles, which sit just over the plot (30 px up; in paper units of the plot's height)
    fig.update_layout(
        title=dict(text=chart.title, x=0.01, xanchor="left"),
        margin=dict(t=top),
        legend=dict(orientation="h", yanchor="bottom", y=1.0 + 30 / plot_px, xanchor="left", x=0),
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


async def _render_all(kaleido: Any, browser: str, drawn: list[charts.Chart], folder: Path) -> dict[str, str]:
    done = {}
    async with kaleido.Kaleido(n=1, timeout=RENDER_TIMEOUT_S, mathjax=False, path=browser) as k:
        for chart in drawn:
            fig = static_figure(chart)
            size = {"width": IMAGE_WIDTH, "height": fig.layout.height or 420}
            try:
                for fmt in FORMATS:
                    opts = {"format": fmt, **size, "scale": PNG_SCALE if fmt == "png" else 1}
                    data = await k.calc_fig(fig, opts=opts)
                    atomic_write(folder / f"{chart.id}.{fmt}", lambda p, d=data: p.write_bytes(d))
                done[chart.id] = ""
            except Exception as exc:  # one figure that fails leaves the others and the document
                done[chart.id] = f"rendering failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
    return done


def render(figures: list[charts.Chart], folder: Path) -> dict[str, str]:
    """Each drawn chart as folder/<id>.svg and .png, in one browser session; chart id -> "" where both
    were written, else the sentence saying why not. Images of an earlier report are removed first."""
    drawn = [c for c in figures if c.drawn and c.figure is not None]
    for old in folder.glob("*") if folder.is_dir() else []:
        if old.suffix.lstrip(".") in FORMATS:
            old.unlink()
    if not drawn:
        return {}
    if os.environ.get(IMAGES_ENV) == "0":
        return dict.fromkeys((c.id for c in drawn), f"images not rendered ({IMAGES_ENV}=0)")
    try:
        import kaleido
    except ImportError:
        return dict.fromkeys((c.id for c in drawn), "kaleido, the static image export, is not installed (`make venv`)")
    browser = find_browser()
    if browser is None:
        return dict.fromkeys((c.id for c in drawn), f"no Chrome or Chromium found to render it ({BROWSER_HINT})")
    folder.mkdir(parents=True, exist_ok=True)
    try:  # in a thread of its own: asyncio.run needs a thread without a running event loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, _render_all(kaleido, browser, drawn, folder)).result()
    except Exception as exc:  # the browser would not start or died: the document is written all the same
        why = f"the browser {browser} could not render it ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        return dict.fromkeys((c.id for c in drawn), why)
