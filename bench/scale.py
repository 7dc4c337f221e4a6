"""Does the orchestrator keep up with a big grid? `python -m bench.scale` (part of `make bench`).

Runs grids of N cells (100, 1,000 and 10,000 by default) of `bench/instant_worker.py` (a worker that
reports its figures at once and imports no framework), every cell a real worker process started,
streamed, checkpointed and rebuilt as in any run, and per size measures: the wall time of the run per
cell, the orchestrator's peak RSS (its journal's end record), the rebuild alone (`mlbench report` on
the folder), report.html's size, and the time headless Chromium takes to load it (where Chromium is
installed). Per-cell overhead at the largest size should stay within 1.5x of that at the smallest,
the orchestrator under 1 GB, the largest report loaded within 10 s. Writes
bench/results/scale-<date>-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ENV, ROOT, run_suite

TARGETS = {"per_cell_growth": 1.5, "orchestrator_rss_mb": 1024.0, "report_load_s": 10.0}


def suite(n: int, parallel: int) -> dict:
    """n cells: one instant worker over n batch sizes (the grid's only axis that grows)."""
    return {
        "name": f"scale{n}",
        "frameworks": ["instant"],
        "workers": {"instant": "bench.instant_worker"},
        "models": ["mlp"],
        "batch_sizes": list(range(1, n + 1)),
        "dataset": {"name": "synthetic", "train_samples": 64, "val_samples": 16},
        "calibrate": False,
        "verify": False,
        "parallel": parallel,
        "monitor_interval_s": 0.5,
    }


def load_time(report: Path) -> float | None:
    """Seconds headless Chromium takes to load the report offline (None: no Chromium here)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_context(offline=True).new_page()
        t0 = time.perf_counter()
        page.goto(report.resolve().as_uri(), wait_until="load", timeout=120_000)  # its scripts run: charts drawn
        took = time.perf_counter() - t0
        browser.close()
    return took


def measure(folder: Path, n: int, parallel: int, browser: bool = True) -> dict:
    env = {**os.environ, **ENV}
    t0 = time.perf_counter()
    run = run_suite(folder, suite(n, parallel))
    wall = time.perf_counter() - t0
    end = [json.loads(x) for x in (run / "journal.ndjson").read_text().splitlines() if '"action": "end"' in x][-1]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlbench", "report", str(run)], cwd=folder, env=env, check=True,
                   capture_output=True)  # fmt: skip
    rebuild = time.perf_counter() - t0
    report = run / "report.html"
    return {
        "cells": n,
        "wall_s": round(wall, 2),
        "per_cell_s": round(wall / n, 4),
        "orchestrator_rss_mb": round(end.get("orchestrator_max_rss_mb") or 0, 1),
        "rebuild_s": round(rebuild, 2),
        "report_mb": round(report.stat().st_size / 1e6, 2),
        "report_load_s": load_time(report) if browser else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--parallel", type=int, default=2, help="cells at once (the suite's parallel)")
    ap.add_argument("--label", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the results file")
    ap.add_argument("--no-browser", action="store_true", help="do not load the reports in Chromium")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlbench-scale-") as tmp:
        for n in a.sizes:
            rows.append(measure(Path(tmp), n, a.parallel, browser=not a.no_browser))
            print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0], rows[-1]
    growth = last["per_cell_s"] / first["per_cell_s"] if first["per_cell_s"] else None
    found = {
        "command": " ".join([sys.executable, "-m", "bench.scale", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sizes": rows,
        "per_cell_growth": growth,
        "targets": TARGETS,
    }
    ok = (
        (growth is None or growth <= TARGETS["per_cell_growth"])
        and all(r["orchestrator_rss_mb"] <= TARGETS["orchestrator_rss_mb"] for r in rows)
        and (last["report_load_s"] is None or last["report_load_s"] <= TARGETS["report_load_s"])
    )
    if growth is not None:
        print(f"per-cell overhead at {last['cells']:,} over {first['cells']:,}: {growth:.2f}x (target <= 1.5x)")
    out = a.out / f"scale-{time.strftime('%Y-%m-%d')}-{a.label}.json"
    out.write_text(json.dumps(found, indent=1))
    print(f"written: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
