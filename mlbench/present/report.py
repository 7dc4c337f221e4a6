"""The HTML report: one self-contained file (plotly.js inlined once, no network), rebuilt from the cells; and
RESULTS.md beside it (mlbench.publish), from the same rows and figures."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from mlbench.analysis import bottleneck, parity, recommend, scaling
from mlbench.present import charts
from mlbench.runfolder import RunFolder

STATUS_ORDER = {"failed": 0, "crashed": 1, "oom": 2, "timeout": 3, "skipped": 4, "ok": 5}


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:,.0f}"
    return _esc(value)


def cells_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("status", "status"),
        ("reason", "reason"),
        ("framework", "framework"),
        ("model_name", "model"),
        ("device", "device"),
        ("hostname", "host"),
        ("precision", "precision"),
        ("batch_size", "batch"),
        ("samples_per_second", "samples/s"),
        ("step_time_cv", "step CV"),
        ("total_train_time", "train s"),
        ("final_val_accuracy", "val acc"),
        ("inference_latency_p50_ms", "p50 ms"),
        ("inference_latency_p99_ms", "p99 ms"),
        ("peak_memory_mb", "peak MiB"),
        ("num_parameters", "params"),
        ("model_size_mb", "disk MiB"),
        ("bottleneck", "bottleneck"),
        ("profile_trace", "trace"),
        ("cell_id", "cell"),
    ]
    ordered = sorted(rows, key=lambda r: (STATUS_ORDER.get(r["status"], 9), r["model_name"], r["framework"]))
    head = "".join(f"<th>{_esc(label)}</th>" for _, label in cols)
    body = []
    for r in ordered:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cls = f" class='st-{_esc(v)}'" if key == "status" else ""
            warn = " ⚠" if key == "step_time_cv" and r.get("noisy") else ""
            if key == "bottleneck" and v:
                cells.append(f"<td title='{_esc(r.get('bottleneck_evidence'))}'>{_esc(v)}</td>")
            elif key == "profile_trace" and v:  # relative to the run folder, where report.html lies
                cells.append(f"<td><a href='{_esc(v)}'>trace</a></td>")
            else:
                cells.append(f"<td{cls}>{_fmt(v)}{warn}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def parity_section(rows: list[dict[str, Any]], tolerance: float | None = None) -> str:
    """Verify verdicts per model and validation accuracy per framework, with the parity verdict."""
    models = list(dict.fromkeys(r["model_name"] for r in rows))
    verify_rows = []
    for m in models:
        r = next((x for x in rows if x["model_name"] == m), {})
        passed = r.get("verify_passed")
        verdict = "not run" if passed is None else ("identical" if passed else "DIFFERENT")
        cls = "" if passed is None else (" class='st-ok'" if passed else " class='st-failed'")
        verify_rows.append(f"<tr><td>{_esc(m)}</td><td{cls}>{verdict}</td><td>{_esc(r.get('verify_detail'))}</td></tr>")
    frameworks = list(dict.fromkeys(r["framework"] for r in rows))
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if r["status"] == "ok":
            key = (r["model_name"], r["device"], r["precision"], r["batch_size"])
            g = groups.setdefault(key, {"row": r})
            g[r["framework"]] = r["final_val_accuracy"]
    acc_rows = []
    for key, g in groups.items():
        accs = "".join(f"<td>{_fmt(g.get(fw) * 100 if g.get(fw) is not None else None, 4)}</td>" for fw in frameworks)
        verdict = g["row"].get("accuracy_parity_verdict")
        cls = {
            "equivalent": " class='st-ok'",
            "different": " class='st-failed'",
            "unresolved": " class='st-skipped'",
            "untrained": " class='st-skipped'",
        }
        acc_rows.append(
            f"<tr>{''.join(f'<td>{_esc(k)}</td>' for k in key)}{accs}"
            f"<td{cls.get(verdict, '')}>{_esc(parity.describe(g['row'], tolerance))}</td></tr>"
        )
    fw_head = "".join(f"<th>{_esc(fw)} val acc %</th>" for fw in frameworks)
    return (
        "<h3>Same model in every framework (mlbench verify)</h3><table><thead><tr><th>model</th><th>verdict</th>"
        f"<th>detail</th></tr></thead><tbody>{''.join(verify_rows)}</tbody></table>"
        "<h3>Accuracy parity</h3><table><thead><tr><th>model</th><th>device</th><th>precision</th><th>batch</th>"
        f"{fw_head}<th>verdict (paired difference, 95% CI)</th></tr></thead><tbody>{''.join(acc_rows)}</tbody></table>"
    )


def _rec_cell(e: recommend.Estimate | None, unit: str) -> str:
    if e is None:
        return "<td>—</td>"
    ci = (
        f"<br><span class='ci'>95% CI {_fmt(e.low)} – {_fmt(e.high)}</span>"
        if e.low is not None or e.high is not None
        else ""
    )
    return f"<td><b>{_esc(e.label)}</b><br>{_fmt(e.value)} {_esc(unit)}{ci}</td>"


def headline(rows: list[dict[str, Any]]) -> str:
    """The recommendations: per model and device, who wins each criterion and how surely."""
    recs = recommend.recommendations(rows)
    if not recs:
        return "<p class='empty'>No recommendation: no cell finished ok.</p>"
    out = []
    for model, device in dict.fromkeys((r.model, r.device) for r in recs):
        body = []
        for r in (x for x in recs if (x.model, x.device) == (model, device)):
            cls = "win" if r.clear else "tie"
            badge = "clear winner" if r.clear else "no clear winner"
            note = f"<br><span class='ci'>{_esc(r.note)}</span>" if r.note else ""
            body.append(
                f"<tr class='rec {cls}' data-criterion='{_esc(r.criterion)}'><td>{_esc(r.title)}{note}</td>"
                f"<td class='badge'>{badge}</td>{_rec_cell(r.winner, r.unit)}{_rec_cell(r.runner_up, r.unit)}"
                f"<td class='verdict'>{_esc(r.verdict)}</td></tr>"
            )
        out.append(
            f"<h3>{_esc(model)} on {_esc(device)}</h3><table class='recs'><thead><tr><th>criterion</th><th>verdict</th>"
            f"<th>best</th><th>runner-up</th><th>evidence</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
    return "".join(out)


def _limit(r: dict[str, Any]) -> str:
    return f"{r['memory_limit_mb']:g} MB ({r['memory_limit_how']})" if r.get("memory_limit_mb") else "none"


def maxbatch_section(searches: list[dict[str, Any]], probes: list[dict[str, Any]]) -> str:
    """`mlbench maxbatch`: the frontier table and memory against batch size, with the limit drawn."""
    if not searches:
        return ""
    head = (
        "<tr><th>framework</th><th>model</th><th>device</th><th>precision</th><th>largest batch that fit</th>"
        "<th>first out of memory</th><th>recommended</th><th>probes</th><th>memory limit</th><th>verdict</th></tr>"
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{_esc('—' if r[k] is None else r[k])}</td>"
            for k in ("framework", "model_name", "device", "precision", "max_batch_size", "first_failing_batch_size")
        )
        + f"<td><b>{_esc('—' if r['recommended_batch_size'] is None else r['recommended_batch_size'])}</b></td>"
        + f"<td>{r['probes']}</td>"
        + f"<td>{_esc(_limit(r))}</td>"
        + f"<td>{_esc(r['status'] + ': ' + r['reason'])}</td></tr>"
        for r in searches
    )
    chart = charts.maxbatch_memory(probes, searches)
    return (
        "<h2 id='maxbatch'>Largest batch that fits</h2><p class='sub'>Each probe a fresh worker: a few full training "
        "steps and an inference pass at that batch; doubling to the first out-of-memory, then bisection. The "
        "recommended batch keeps the suite's margin below the largest that fit.</p>"
        f"<table class='cells'><thead>{head}</thead><tbody>{body}</tbody></table>"
        f"<section class='chart' id='{chart.id}'><h3>{_esc(chart.title)}</h3>{chart.html}</section>"
    )


def scaling_section(rows: list[dict[str, Any]]) -> str:
    """When a second device pays: each data-parallel cell against its one-device cell, with the interval."""
    found = scaling.verdicts(rows)
    if not found:
        return ""
    items = "".join(f"<li class='scaling {_esc(v.verdict.replace(' ', '-'))}'>{_esc(v.text)}</li>" for v in found)
    return (
        "<h3>Several devices</h3><p class='sub'>Each data-parallel cell against the one-device cell of the same "
        "framework, model and precision at its per-device batch (scaling efficiency 1 = linear); it pays where "
        f"the speed-up's 95% bounds stay above 1x.</p><ul>{items}</ul>"
    )


def bottleneck_section(rows: list[dict[str, Any]]) -> str:
    """What holds each cell back (mlbench/analysis/bottleneck.py), and what would help, grouped by verdict."""
    found = bottleneck.by_verdict(rows)
    if not found:
        return ""
    items = "".join(
        f"<li><b>{_esc(verdict)}</b> ({len(cells)} cell(s)): {_esc(bottleneck.ADVICE[verdict])}<ul>"
        + "".join(f"<li>{_esc(recommend.label(r))}: {_esc(r['bottleneck_evidence'])}</li>" for r in cells)
        + "</ul></li>"
        for verdict, cells in found.items()
    )
    return (
        "<h3 id='bottlenecks'>Bottlenecks</h3><p class='sub'>From each cell's profiled steps, MFU and GPU "
        "utilisation; the thresholds and their reasons are in mlbench/analysis/bottleneck.py.</p>"
        f"<ul>{items}</ul>"
    )


# minor page faults a step above which the report says so: glibc's default settings cost PyTorch and JAX
# ResNet-18/BERT cells on a CPU 18,000-204,000 a step; `malloc: steady` 0-1,200
FAULTS_PER_STEP = 5000


def hosts_section(rows: list[dict[str, Any]]) -> str:
    """Where the cells ran, where the run used more than one machine (a Ray cluster)."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] != "skipped" or r.get("hostname"):
            hosts.setdefault(r.get("hostname") or "?", []).append(r)
    if len(hosts) < 2:
        return ""
    body = "".join(
        f"<tr><td>{_esc(h)}</td><td>{_esc(', '.join(sorted({r.get('executor') or 'local' for r in rs})))}</td>"
        f"<td>{_esc('; '.join(sorted({recommend.hardware(r) for r in rs})))}</td><td>{len(rs)}</td>"
        f"<td>{sum(r['status'] == 'ok' for r in rs)}</td></tr>"
        for h, rs in sorted(hosts.items())
    )
    return (
        "<h2 id='hosts'>Hosts</h2><table><thead><tr><th>host</th><th>executor</th><th>hardware</th><th>cells</th>"
        f"<th>ok</th></tr></thead><tbody>{body}</tbody></table>"
    )


def warnings(rows: list[dict[str, Any]]) -> list[str]:
    """What a reader must know before trusting the figures, most serious first."""
    out = []
    mixed = [r for r in recommend.recommendations(rows) if len(r.hardware) > 1]
    if mixed:
        where = ", ".join(sorted({f"{r.model} on {r.device}" for r in mixed}))
        out.append(
            f"{len(mixed)} recommendation(s) compare cells that ran on different hardware ({where}): they compare "
            "machines as well as frameworks. See Hosts; run each comparison on one kind of node to separate the two."
        )
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    if bad:
        out.append(f"{len(bad)} cell(s) did not finish: see the cells table (failures first).")
    if any(r.get("verify_passed") is False for r in rows):
        out.append(
            "mlbench verify found a model that differs between frameworks: its comparisons are not like for like."
        )
    different = sorted({r["model_name"] for r in rows if r.get("accuracy_parity_verdict") == "different"})
    if different:  # only a difference the sample resolves: an unresolved one is said in the Parity section
        out.append(
            f"Validation accuracy differs across frameworks by more than the allowed points ({', '.join(different)}): "
            "the paired 95% interval of the difference lies outside the tolerance. See Parity."
        )
    noisy = [r for r in rows if r.get("noisy")]
    if noisy:
        out.append(
            f"{len(noisy)} cell(s) have a step-time coefficient of variation above 10%: their throughput is too "
            "noisy to rank on (another load on the machine, throttling, or too few steps)."
        )
    faulting = [r for r in recommend.ok_rows(rows) if (r.get("page_faults_per_step") or 0) > FAULTS_PER_STEP]
    if faulting:
        worst = max(r["page_faults_per_step"] for r in faulting)
        out.append(
            f"{len(faulting)} cell(s) page-faulted more than {FAULTS_PER_STEP:,} pages a training step (up to "
            f"{worst:,.0f}): memory given back to the kernel and mapped in again every step, a cost inside their "
            "step times that the allocator's settings decide (see `malloc` in docs/measurement.md)."
        )
    over = [
        r
        for r in recommend.ok_rows(rows)
        if r.get("peak_tflops") and (r.get("achieved_tflops") or 0) > r["peak_tflops"] and r.get("mfu") is None
    ]
    if over:
        out.append(
            f"{len(over)} cell(s) trained faster than the calibrated peak of their device and precision: their MFU "
            "would be above 1, so it is not stored; the calibration measured too low a peak (see calibration.json)."
        )
    busy = [r for r in recommend.ok_rows(rows) if recommend.loaded(r)]
    if busy:
        worst = max(r["cpu_other_pct"] for r in busy)
        out.append(
            f"{len(busy)} cell(s) ran while other processes used more than "
            f"{min(recommend.other_load_limit_pct(r) for r in busy):.0f}% of a core (up to {worst:.0f}%): their "
            "timings measure that contention too. Rerun them on a quiet machine."
        )
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{margin-bottom:0}.sub{color:#666;margin-top:4px}nav a{margin-right:12px}
table{border-collapse:collapse;font-size:13px;margin:12px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}.st-ok{color:#17803d}.st-failed,.st-crashed,.st-oom,.st-timeout{color:#b00020;font-weight:600}
.st-skipped{color:#a06000}.empty{color:#888;font-style:italic}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.warn{background:#fff4e5;border-left:4px solid #ff9800;padding:6px 10px;margin:6px 0}
.rec.win .badge{color:#17803d;font-weight:600}.rec.tie .badge{color:#a06000;font-weight:600}.ci{color:#666;font-size:12px}
.chart{margin:18px 0}
"""


def build_html(
    rows: list[dict[str, Any]],
    suite: dict[str, Any],
    env: dict[str, Any],
    grid_size: int | None = None,
    stale: int = 0,
    frontier: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], []),
    drawn: tuple[list[charts.Chart], list[charts.Chart]] | None = None,
) -> str:
    """The whole report as one HTML string; every piece of text from configs and workers is escaped.
    `frontier`: `mlbench maxbatch`'s searches and probes in this run folder, if any; `drawn`: the charts
    and trade-off charts where the caller made them already (RESULTS.md renders the same figures)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{v} {_esc(k)}" for k, v in sorted(counts.items())) or "no cells stored"
    notes = warnings(rows)
    if stale:
        notes.insert(
            0,
            f"{stale} stored cell(s) were measured under a different spec (another config or an older mlbench) "
            "and are not part of these results; `mlbench run CONFIG --resume` runs the cells missing.",
        )
    warn = "".join(f"<p class='warn'>⚠ {_esc(w)}</p>" for w in notes)
    figures, trade = drawn or draw(rows)
    chart_html = "".join(
        f"<section class='chart' id='{c.id}'><h3>{_esc(c.title)}</h3>{c.html}</section>" for c in figures
    )
    trade_html = "".join(
        f"<section class='chart' id='{c.id}'><h3>{_esc(c.title)}</h3>{c.html}</section>" for c in trade
    )
    hosts = sorted({r["hostname"] for r in rows if r.get("hostname")}) or [env.get("hostname")]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mlbench report: {_esc(suite.get("name"))}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>mlbench: {_esc(suite.get("name"))}</h1>
<p class="sub">{len(rows)} of the grid's {grid_size if grid_size is not None else len(rows)} cells stored: {summary}
· {"hosts" if len(hosts) > 1 else "host"} {_esc(", ".join(str(h) for h in hosts))}</p>
<nav><a href="#recommendations">Recommendations</a><a href="#tradeoffs">Trade-offs</a><a href="#charts">Charts</a>
<a href="#parity">Parity</a><a href="#cells">Cells</a><a href="#environment">Environment</a><a href="#config">Config</a></nav>
{warn}
<h2 id="recommendations">Recommendations</h2>
<p class="sub">Per model and device, the best of each framework compared on each criterion; a winner only where
the 95% confidence intervals do not overlap (peak memory: a gap over {recommend.MEMORY_TOLERANCE:.0%}).</p>
{headline(rows)}
{scaling_section(rows)}
{bottleneck_section(rows)}
<h2 id="tradeoffs">Trade-offs</h2>
<p class="sub">Diamonds: the configurations no other beats on both axes (the Pareto front).</p>{trade_html}
<h2 id="charts">Charts</h2>{chart_html}
{maxbatch_section(*frontier)}
<h2 id="parity">Parity</h2>{parity_section(rows, suite.get("accuracy_parity_pts"))}
{hosts_section(rows)}
<h2 id="cells">Cells</h2>{cells_table(rows)}
<h2 id="environment">Environment</h2><pre>{_esc(json.dumps(env, indent=1, default=str))}</pre>
<h2 id="config">Configuration</h2><pre>{_esc(json.dumps(suite, indent=1, default=str))}</pre>
</body></html>
"""


def draw(rows: list[dict[str, Any]]) -> tuple[list[charts.Chart], list[charts.Chart]]:
    """The report's charts and its trade-off charts, each figure made once."""
    return [c(rows) for c in charts.ALL], charts.pareto(rows)


def write(
    run_dir: Path,
    rows: list[dict[str, Any]],
    suite: dict[str, Any],
    env: dict[str, Any],
    grid_size: int | None = None,
    stale: int = 0,
    *,
    out_dir: Path | None = None,
    command: str | None = None,
) -> Path:
    """report.html, and RESULTS.md with its chart images (mlbench.publish), into out_dir (default: the
    run folder); the report's path. `command`: what made the run, quoted at the top of RESULTS.md."""
    from mlbench.present import results_md
    from mlbench.results.store import atomic_write
    from mlbench.tasks import maxbatch

    out = RunFolder(Path(out_dir) if out_dir is not None else run_dir)
    out.root.mkdir(parents=True, exist_ok=True)
    frontier = maxbatch.load(run_dir)
    figures, trade = draw(rows)
    html_text = build_html(rows, suite, env, grid_size, stale, frontier=frontier, drawn=(figures, trade))
    atomic_write(out.report, lambda p: p.write_text(html_text, encoding="utf-8"))
    frontier_chart = [charts.maxbatch_memory(frontier[1], frontier[0])] if frontier[0] else []
    everything = [*figures, *trade, *frontier_chart]
    results_md.write(
        out.root, rows, suite, env, everything, command=command, grid_size=grid_size, stale=stale, searches=frontier[0]
    )
    return out.report


def from_results(source: Path, out_dir: Path | None = None, command: str | None = None) -> Path:
    """report.html and RESULTS.md from a results file (results.parquet, results.json) or a run folder's
    results.parquet, nothing rebuilt, into out_dir (default: the folder holding the results); the report's path."""
    from mlbench.analysis import compare

    found = compare.load_results(source)
    return write(found.folder, found.rows, found.suite, found.env, out_dir=out_dir or found.folder, command=command)
