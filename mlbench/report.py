"""The HTML report: one self-contained file (plotly.js inlined once, no network), rebuilt from the cells."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

STATUS_ORDER = {"failed": 0, "crashed": 1, "oom": 2, "timeout": 3, "skipped": 4, "ok": 5}


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return _esc(value)


def _figure_html(fig: go.Figure) -> str:
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=380)
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def throughput_chart(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok" and r["samples_per_second"] is not None]
    if not ok:
        return "<p class='empty'>No training throughput to show: no cell finished ok.</p>"
    fig = go.Figure()
    for fw in sorted({r["framework"] for r in ok}):
        rs = [r for r in ok if r["framework"] == fw]
        x = [f"{r['model_name']} {r['device']} {r['precision']} bs{r['batch_size']}" for r in rs]
        y = [r["samples_per_second"] for r in rs]
        hi = [
            (r["samples_per_second_ci_high"] - r["samples_per_second"]) if r["samples_per_second_ci_high"] else 0
            for r in rs
        ]
        lo = [
            (r["samples_per_second"] - r["samples_per_second_ci_low"]) if r["samples_per_second_ci_low"] else 0
            for r in rs
        ]
        fig.add_bar(name=fw, x=x, y=y, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo))
    fig.update_layout(
        title="Training throughput (samples/s, 95% CI of the median step)",
        barmode="group",
        yaxis_title="samples/s",
        yaxis_type="log",
    )
    return _figure_html(fig)


def latency_chart(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok" and r["inference_latency_p50_ms"] is not None]
    if not ok:
        return "<p class='empty'>No inference latency to show: no cell finished ok.</p>"
    fig = go.Figure()
    for q in ("p50", "p95", "p99"):
        fig.add_bar(
            name=q,
            x=[f"{r['framework']} {r['model_name']} bs{r['batch_size']} {r['precision']}" for r in ok],
            y=[r[f"inference_latency_{q}_ms"] for r in ok],
        )
    fig.update_layout(title="Inference latency (ms)", barmode="group", yaxis_title="ms", yaxis_type="log")
    return _figure_html(fig)


def cells_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("status", "status"),
        ("reason", "reason"),
        ("framework", "framework"),
        ("model_name", "model"),
        ("device", "device"),
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
            cells.append(f"<td{cls}>{_fmt(v)}{warn}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def parity_section(rows: list[dict[str, Any]]) -> str:
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
            g = groups.setdefault(key, {"spread": r.get("accuracy_spread_pts"), "parity": r.get("accuracy_parity")})
            g[r["framework"]] = r["final_val_accuracy"]
    acc_rows = []
    for key, g in groups.items():
        accs = "".join(f"<td>{_fmt(g.get(fw) * 100 if g.get(fw) is not None else None, 4)}</td>" for fw in frameworks)
        verdict = "—" if g["parity"] is None else ("within tolerance" if g["parity"] else "OUTSIDE tolerance")
        cls = "" if g["parity"] is None else (" class='st-ok'" if g["parity"] else " class='st-failed'")
        acc_rows.append(
            f"<tr>{''.join(f'<td>{_esc(k)}</td>' for k in key)}{accs}<td>{_fmt(g['spread'])}</td>"
            f"<td{cls}>{verdict}</td></tr>"
        )
    fw_head = "".join(f"<th>{_esc(fw)} val acc %</th>" for fw in frameworks)
    return (
        "<h3>Same model in every framework (mlbench verify)</h3><table><thead><tr><th>model</th><th>verdict</th>"
        f"<th>detail</th></tr></thead><tbody>{''.join(verify_rows)}</tbody></table>"
        "<h3>Accuracy parity</h3><table><thead><tr><th>model</th><th>device</th><th>precision</th><th>batch</th>"
        f"{fw_head}<th>spread (points)</th><th>verdict</th></tr></thead><tbody>{''.join(acc_rows)}</tbody></table>"
    )


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:12px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f5f5f5}.st-ok{color:#17803d}.st-failed,.st-crashed,.st-oom,.st-timeout{color:#b00020;font-weight:600}
.st-skipped{color:#a06000}.empty{color:#888;font-style:italic}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
"""


def build_html(
    rows: list[dict[str, Any]], suite: dict[str, Any], env: dict[str, Any], grid_size: int | None = None
) -> str:
    """The whole report as one HTML string; every piece of text from configs and workers is escaped."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{v} {_esc(k)}" for k, v in sorted(counts.items())) or "no cells stored"
    noisy = [r for r in rows if r.get("noisy")]
    warn = (
        (
            f"<p>⚠ {len(noisy)} cell(s) have a step-time coefficient of variation above 10%: "
            "their throughput is too noisy to rank on.</p>"
        )
        if noisy
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mlbench report: {_esc(suite.get("name"))}</title>
<style>{CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>mlbench: {_esc(suite.get("name"))}</h1>
<p class="sub">{len(rows)} of the grid's {grid_size if grid_size is not None else len(rows)} cells stored: {summary}</p>{warn}
<h2>Training throughput</h2>{throughput_chart(rows)}
<h2>Inference latency</h2>{latency_chart(rows)}
<h2>Parity</h2>{parity_section(rows)}
<h2>Cells</h2>{cells_table(rows)}
<h2>Environment</h2><pre>{_esc(json.dumps(env, indent=1, default=str))}</pre>
<h2>Configuration</h2><pre>{_esc(json.dumps(suite, indent=1, default=str))}</pre>
</body></html>
"""


def write(
    run_dir: Path, rows: list[dict[str, Any]], suite: dict[str, Any], env: dict[str, Any], grid_size: int | None = None
) -> Path:
    from mlbench.store import atomic_write

    path = run_dir / "report.html"
    atomic_write(path, lambda p: p.write_text(build_html(rows, suite, env, grid_size), encoding="utf-8"))
    return path
