"""report.html: one self-contained page (plotly.js inlined once, no network) of a run's Content."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from mlbench.analysis import bottleneck, parity, recommend, scaling
from mlbench.present import charts
from mlbench.present.content import DATA_PATH_NOTE, RULES, STATUS_ORDER, Content, data_path_cells, data_path_head
from mlbench.present.content import badge as content_badge
from mlbench.results.labels import band_text, label, num
from mlbench.results.store import atomic_write


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    return _esc(num(value, digits))


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
            # the mean over the seeds the verdict read, where it read several
            g[r["framework"]] = r.get("accuracy_seed_mean") or r["final_val_accuracy"]
    acc_rows = []
    for key, g in groups.items():
        accs = "".join(f"<td>{_fmt(g.get(fw) * 100 if g.get(fw) is not None else None, 4)}</td>" for fw in frameworks)
        verdict = g["row"].get("accuracy_parity_verdict")
        cls = {
            "equivalent": " class='st-ok'",
            "different": " class='st-failed'",
            "unresolved": " class='st-skipped'",
            "untrained": " class='st-skipped'",
            "not_converged": " class='st-skipped'",
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
    covers = {"runs": f" across {e.runs} runs", "within_run": " within one run", "validation": " of the validation"}
    ci = (
        f"<br><span class='ci'>95% CI {_fmt(e.low)} – {_fmt(e.high)}{covers.get(e.kind or '', '')}</span>"
        if e.low is not None or e.high is not None
        else ""
    )
    return f"<td><b>{_esc(e.label)}</b><br>{_fmt(e.value)} {_esc(unit)}{ci}</td>"


def headline(recs: list[recommend.Recommendation]) -> str:
    """The recommendations: per model and device, who wins each criterion and how surely."""
    if not recs:
        return "<p class='empty'>No recommendation: no cell finished ok.</p>"
    out = []
    for model, device in dict.fromkeys((r.model, r.device) for r in recs):
        body = []
        for r in (x for x in recs if (x.model, x.device) == (model, device)):
            cls = "win" if r.clear else "tie"
            badge = content_badge(r)
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


def maxbatch_section(searches: list[dict[str, Any]], chart: charts.Chart | None) -> str:
    """`mlbench maxbatch`: the frontier table and memory against batch size, with the limit drawn."""
    if not searches or chart is None:
        return ""
    head = (
        "<tr><th>framework</th><th>model</th><th>device</th><th>precision</th><th>largest batch that fit</th>"
        "<th>first out of memory</th><th>the edge, every probe</th><th>recommended (fit again)</th><th>probes</th>"
        "<th>memory limit</th><th>verdict</th></tr>"
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{_esc('—' if r[k] is None else r[k])}</td>"
            for k in ("framework", "model_name", "device", "precision", "max_batch_size", "first_failing_batch_size")
        )
        + f"<td>{_esc(band_text(r))}</td>"
        + f"<td><b>{_esc('—' if r['recommended_batch_size'] is None else r['recommended_batch_size'])}</b></td>"
        + f"<td>{r['probes']}</td>"
        + f"<td>{_esc(_limit(r))}</td>"
        + f"<td>{_esc(r['status'] + ': ' + r['reason'])}</td></tr>"
        for r in searches
    )
    return (
        "<h2 id='maxbatch'>Largest batch that fits</h2><p class='sub'>Each probe a fresh worker: a few full training "
        "steps and an inference pass at that batch; doubling to the first out-of-memory, then bisection. The "
        "edge moves between processes: the search's largest fit and first failure run again, and the band is what "
        "every probe said. The recommended batch keeps the suite's margin below the band's low end and fit once "
        "more in a fresh process.</p>"
        f"<table class='cells'><thead>{head}</thead><tbody>{body}</tbody></table>"
        f"<section class='chart' id='{chart.id}'><h3>{_esc(chart.title)}</h3>{chart.html}</section>"
    )


def scaling_section(found: list[scaling.Verdict]) -> str:
    """When a second device pays: each data-parallel cell against its one-device cell, with the interval."""
    if not found:
        return ""
    items = "".join(f"<li class='scaling {_esc(v.verdict.replace(' ', '-'))}'>{_esc(v.text)}</li>" for v in found)
    return (
        "<h3>Several devices</h3><p class='sub'>Each data-parallel cell against the one-device cell of the same "
        "framework, model and precision at its per-device batch (scaling efficiency 1 = linear); it pays where "
        f"the speed-up's 95% bounds stay above 1x.</p><ul>{items}</ul>"
    )


def data_path_section(rows: list[dict[str, Any]]) -> str:
    """The data path: each file-fed cell against its memory twin (mlbench/analysis/datapath.py)."""
    if not rows:
        return ""
    columns = data_path_head(rows)
    head = "<th>cell</th>" + "".join(f"<th>{_esc(title)}</th>" for _, title in columns)
    body = []
    for r in rows:
        cells = data_path_cells(r)
        name = f"{r['framework']} {r['model_name']} {r['device']} {r['precision']} bs{r['batch_size']}"
        tds = "".join(
            f"<td>{_fmt(cells[key]) if cells[key] is None or isinstance(cells[key], (int, float)) else _esc(cells[key])}</td>"
            for key, _ in columns
        )
        body.append(f"<tr class='st-{_esc(r['status'])}'><td>{_esc(name)}</td>{tds}</tr>")
    return (
        f"<h3 id='data-path'>Data path</h3><p class='sub'>{_esc(DATA_PATH_NOTE)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def bottleneck_section(found: dict[str, list[dict[str, Any]]]) -> str:
    """What holds each cell back (mlbench/analysis/bottleneck.py), and what would help, grouped by verdict."""
    if not found:
        return ""
    items = "".join(
        f"<li><b>{_esc(verdict)}</b> ({len(cells)} cell(s)): {_esc(bottleneck.ADVICE[verdict])}<ul>"
        + "".join(f"<li>{_esc(label(r))}: {_esc(r['bottleneck_evidence'])}</li>" for r in cells)
        + "</ul></li>"
        for verdict, cells in found.items()
    )
    return (
        "<h3 id='bottlenecks'>Bottlenecks</h3><p class='sub'>From each cell's profiled steps, batch scaling, MFU "
        "and GPU utilisation; the thresholds and their reasons are in mlbench/analysis/bottleneck.py. "
        f"{_esc(bottleneck.CPU_BLIND[0].upper() + bottleneck.CPU_BLIND[1:])}.</p>"
        f"<ul>{items}</ul>"
    )


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


def _charts(drawn: list[charts.Chart]) -> str:
    return "".join(f"<section class='chart' id='{c.id}'><h3>{_esc(c.title)}</h3>{c.html}</section>" for c in drawn)


def build_html(content: Content) -> str:
    """The whole report as one HTML string; every piece of text from configs and workers is escaped."""
    rows, suite, env = content.rows, content.suite, content.env
    summary = ", ".join(f"{v} {_esc(k)}" for k, v in sorted(content.counts.items())) or "no cells stored"
    warn = "".join(f"<p class='warn'>⚠ {_esc(w)}</p>" for w in content.warnings)
    grid_size = content.grid_size if content.grid_size is not None else len(rows)
    hosts = content.hosts
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mlbench report: {_esc(suite.get("name"))}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>mlbench: {_esc(suite.get("name"))}</h1>
<p class="sub">{len(rows)} of the grid's {grid_size} cells stored: {summary}
· {"hosts" if len(hosts) > 1 else "host"} {_esc(", ".join(hosts))}</p>
<nav><a href="#recommendations">Recommendations</a><a href="#tradeoffs">Trade-offs</a><a href="#charts">Charts</a>
<a href="#parity">Parity</a><a href="#cells">Cells</a><a href="#environment">Environment</a><a href="#config">Config</a></nav>
{warn}
<h2 id="recommendations">Recommendations</h2>
<p class="sub">Per model and device, the best of each framework compared on each criterion. {_esc(RULES)}</p>
{headline(content.recommendations)}
{scaling_section(content.scaling)}
{bottleneck_section(content.bottlenecks)}
{data_path_section(content.data_path)}
<h2 id="tradeoffs">Trade-offs</h2>
<p class="sub">Diamonds: the configurations no other beats on both axes (the Pareto front).</p>{_charts(content.tradeoffs)}
<h2 id="charts">Charts</h2>{_charts(content.figures)}
{maxbatch_section(content.searches, content.frontier_chart)}
<h2 id="parity">Parity</h2>{parity_section(rows, suite.get("accuracy_parity_pts"))}
{hosts_section(rows)}
<h2 id="cells">Cells</h2>{cells_table(rows)}
<h2 id="environment">Environment</h2><pre>{_esc(json.dumps(env, indent=1, default=str))}</pre>
<h2 id="config">Configuration</h2><pre>{_esc(json.dumps(suite, indent=1, default=str))}</pre>
</body></html>
"""


def write(path: Path, content: Content) -> Path:
    """report.html at `path`, written atomically."""
    html_text = build_html(content)
    atomic_write(path, lambda p: p.write_text(html_text, encoding="utf-8"))
    return path
