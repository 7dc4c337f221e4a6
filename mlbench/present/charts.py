"""The report's charts: each a Plotly figure drawn from result rows, or a sentence saying why there is
nothing to draw (never an empty axis). plotly.js is not included here; the report inlines it once."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlbench.analysis import evidence, recommend, scaling

Row = dict[str, Any]
COLORS = {"pytorch": "#ee4c2c", "tensorflow": "#ff8f00", "jax": "#5e35b1"}
PALETTE = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"]


@dataclass
class Chart:
    id: str
    title: str
    html: str  # the figure's div, or a <p class="empty"> saying why there is none
    drawn: bool
    figure: go.Figure | None = field(default=None, repr=False)  # the same figure, for static images (RESULTS.md)
    why: str = ""  # where nothing is drawn: the sentence saying why


def color(framework: str) -> str:
    return COLORS.get(framework) or PALETTE[sum(map(ord, framework)) % len(PALETTE)]


def _empty(cid: str, title: str, why: str) -> Chart:
    return Chart(cid, title, f"<p class='empty'>{html.escape(why)}</p>", False, why=why)


def _figure(cid: str, title: str, fig: go.Figure, height: int = 420) -> Chart:
    fig.update_layout(
        template="plotly_white",
        margin=dict(l=70, r=20, t=40, b=60),
        height=height,
        legend=dict(orientation="h", y=-0.18),
    )
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{cid}", config={"displaylogo": False})
    return Chart(cid, title, div, True, fig)


def _models(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r["model_name"] for r in rows))


def _label(r: Row, *skip: str) -> str:
    parts = {
        "framework": r["framework"],
        "model": r["model_name"],
        "device": r["device"],
        "precision": r["precision"],
        "batch": f"bs{r['batch_size']}",
    }
    return " ".join(v for k, v in parts.items() if k not in skip)


def _subplots(models: list[str], **kw: Any) -> go.Figure:
    return make_subplots(rows=1, cols=len(models), subplot_titles=models, **kw)


def _legend_once(seen: set[str], name: str) -> bool:
    first = name not in seen
    seen.add(name)
    return first


def throughput(rows: list[Row]) -> Chart:
    title = "Training throughput per model and framework"
    ok = [r for r in recommend.ok_rows(rows) if r.get("samples_per_second") is not None]
    if not ok:
        return _empty("throughput", title, "No training throughput to show: no cell finished ok.")
    models = _models(ok)
    fig = _subplots(models)
    seen: set[str] = set()
    for col, m in enumerate(models, 1):
        for fw in sorted({r["framework"] for r in ok}):
            rs = [r for r in ok if r["model_name"] == m and r["framework"] == fw]
            if not rs:
                continue
            y = [r["samples_per_second"] for r in rs]
            hi = [(r["samples_per_second_ci_high"] or v) - v for r, v in zip(rs, y, strict=True)]
            lo = [v - (r["samples_per_second_ci_low"] or v) for r, v in zip(rs, y, strict=True)]
            fig.add_bar(
                name=fw,
                legendgroup=fw,
                showlegend=_legend_once(seen, fw),
                marker_color=color(fw),
                marker_pattern_shape=["/" if evidence.why_untrusted(r) else "" for r in rs],
                x=[_label(r, "framework", "model") for r in rs],
                y=y,
                error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                hovertext=[_interval_note(r) for r in rs],
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="samples/s (95% CI; hatched: not ranked)", col=1)
    return _figure("throughput", title, fig)


def _interval_note(r: Row) -> str:
    """What a bar's interval covers, and why a cell is not ranked, for its hover text."""
    kind = {"runs": f"across {r.get('repeats') or '?'} runs", "within_run": "within one run"}.get(
        r.get("ci_kind") or "", ""
    )
    why = evidence.why_untrusted(r)
    return "; ".join(x for x in (f"95% interval {kind}" if kind else "", f"not ranked: {why}" if why else "") if x)


def batch_scaling(rows: list[Row]) -> Chart:
    title = "Batch-size scaling"
    ok = [r for r in recommend.ok_rows(rows) if r.get("samples_per_second") is not None]
    series: dict[tuple[str, str, str, str], list[Row]] = {}
    for r in ok:
        series.setdefault((r["model_name"], r["framework"], r["device"], r["precision"]), []).append(r)
    series = {k: v for k, v in series.items() if len({r["batch_size"] for r in v}) > 1}
    if not series:
        return _empty("batch-scaling", title, "No batch-size scaling to show: no configuration ran at two batch sizes.")
    models = list(dict.fromkeys(k[0] for k in series))
    fig = _subplots(models)
    seen: set[str] = set()
    for (m, fw, dev, prec), rs in series.items():
        rs = sorted(rs, key=lambda r: r["batch_size"])
        name = f"{fw} {dev} {prec}"
        fig.add_scatter(
            name=name,
            legendgroup=name,
            showlegend=_legend_once(seen, name),
            x=[r["batch_size"] for r in rs],
            y=[r["samples_per_second"] for r in rs],
            mode="lines+markers",
            line=dict(color=color(fw), dash="solid" if prec == "fp32" else "dash"),
            row=1,
            col=models.index(m) + 1,
        )
    fig.update_xaxes(type="log", title_text="batch size")
    fig.update_yaxes(title_text="samples/s", col=1)
    return _figure("batch-scaling", title, fig)


def _ratio_chart(
    cid: str, title: str, pairs: list[Row], why: str, what: Callable[[Row], str], ytitle: str, with_accuracy: bool
) -> Chart:
    if not pairs:
        return _empty(cid, title, why)
    fig = make_subplots(rows=2 if with_accuracy else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for fw in sorted({p["row"]["framework"] for p in pairs}):
        ps = [p for p in pairs if p["row"]["framework"] == fw]
        x = [what(p) for p in ps]
        fig.add_bar(name=fw, legendgroup=fw, marker_color=color(fw), x=x, y=[p["ratio"] for p in ps], row=1, col=1)
        if with_accuracy:
            fig.add_bar(
                name=fw,
                legendgroup=fw,
                showlegend=False,
                marker_color=color(fw),
                x=x,
                y=[p["accuracy_delta_pts"] for p in ps],
                row=2,
                col=1,
            )
    fig.add_hline(y=1.0, line_dash="dot", row=1, col=1)
    fig.update_yaxes(title_text=ytitle, row=1, col=1)
    if with_accuracy:
        fig.update_yaxes(title_text="val accuracy change (points)", row=2, col=1)
    fig.update_layout(barmode="group")
    return _figure(cid, title, fig, height=520 if with_accuracy else 420)


def precision_speedup(rows: list[Row]) -> Chart:
    pairs = recommend.ratios(rows, "precision", lambda p: p == "fp32")
    with_accuracy = any(p["accuracy_delta_pts"] is not None for p in pairs)
    return _ratio_chart(
        "precision",
        "Mixed precision: speed-up over fp32 and accuracy cost",
        pairs,
        "No precision comparison to show: no configuration ran both fp32 and a mixed precision.",
        lambda p: f"{p['row']['model_name']} {p['row']['precision']} {p['row']['device']} bs{p['row']['batch_size']}",
        "speed-up over fp32 (x)",
        with_accuracy,
    )


def device_speedup(rows: list[Row]) -> Chart:
    pairs = recommend.ratios(rows, "device", lambda d: d == "cpu")
    pairs = [p for p in pairs if recommend.gpu_count(p["row"]["device"]) == 1]
    return _ratio_chart(
        "device",
        "GPU speed-up over CPU",
        pairs,
        "No CPU/GPU comparison to show: no configuration ran on both the CPU and one GPU.",
        lambda p: f"{p['row']['model_name']} {p['row']['device']} {p['row']['precision']} bs{p['row']['batch_size']}",
        "speed-up over CPU (x)",
        False,
    )


def data_parallel_scaling(rows: list[Row]) -> Chart:
    """Throughput and scaling efficiency against the device count: one line per framework, precision and
    per-device batch, from the one-device cell (efficiency 1 by definition) to each data-parallel cell
    measured against it (see mlbench/analysis/scaling.py)."""
    title = "Data-parallel scaling: throughput and efficiency against device count"
    ok = [r for r in recommend.ok_rows(rows) if r.get("scaling_efficiency") is not None]
    if not ok:
        return _empty(
            "scaling",
            title,
            "No data-parallel scaling to show: no cell on several devices has a one-device cell of the same "
            "framework, model and precision at its per-device batch size in this run.",
        )
    models = _models(ok)
    fig = make_subplots(rows=2, cols=len(models), subplot_titles=models, shared_xaxes=True, vertical_spacing=0.1)
    seen: set[str] = set()
    for col, m in enumerate(models, 1):
        lines: dict[tuple[str, str, int], list[Row]] = {}
        for r in (r for r in ok if r["model_name"] == m):
            lines.setdefault((r["framework"], r["precision"], r["per_device_batch_size"]), []).append(r)
        for (fw, prec, per_device), rs in lines.items():
            _scaling_line(
                fig, col, seen, f"{fw} {prec} {per_device}/device", color(fw), scaling.baseline(rs[0], rows), rs
            )
        fig.add_hline(y=1.0, line_dash="dot", row=2, col=col)
    fig.update_xaxes(title_text="devices", dtick=1, row=2)
    fig.update_yaxes(title_text="samples/s (95% CI)", row=1, col=1)
    fig.update_yaxes(tickformat=".0%", row=2)
    fig.update_yaxes(title_text="scaling efficiency (100% = linear)", row=2, col=1)
    return _figure("scaling", title, fig, height=560)


def _scaling_line(fig: go.Figure, col: int, seen: set[str], name: str, colour: str, base: Row, rs: list[Row]) -> None:
    """One line of the scaling chart: throughput above, efficiency below, each with its interval."""
    points = sorted([base, *rs], key=lambda r: r["num_devices"])
    x = [r["num_devices"] for r in points]
    y = [r["samples_per_second"] for r in points]
    hi = [(r["samples_per_second_ci_high"] or v) - v for r, v in zip(points, y, strict=True)]
    lo = [v - (r["samples_per_second_ci_low"] or v) for r, v in zip(points, y, strict=True)]
    common = dict(name=name, legendgroup=name, line=dict(color=colour), mode="lines+markers")
    text = [r["device"] for r in points]
    fig.add_scatter(
        **common,
        showlegend=_legend_once(seen, name),
        x=x,
        y=y,
        error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
        text=text,
        hovertemplate="%{text}: %{y:.4g} samples/s",
        row=1,
        col=col,
    )
    eff = [1.0 if r is base else r["scaling_efficiency"] for r in points]
    fig.add_scatter(
        **common,
        showlegend=False,
        x=x,
        y=eff,
        error_y=dict(
            type="data",
            symmetric=False,
            array=[0 if r is base else (r["scaling_efficiency_high"] or e) - e for r, e in zip(points, eff)],
            arrayminus=[0 if r is base else e - (r["scaling_efficiency_low"] or e) for r, e in zip(points, eff)],
        ),
        text=text,
        hovertemplate="%{text}: efficiency %{y:.0%}",
        row=2,
        col=col,
    )


def maxbatch_memory(probes: list[Row], searches: list[Row]) -> Chart:
    """`mlbench maxbatch`: peak memory against batch size per framework (out-of-memory probes marked
    with an x at the batch they failed), the memory limit drawn where the searches ran under one."""
    title = "Memory against batch size (maxbatch probes)"
    measured = [p for p in probes if p.get("fits") is not None]
    if not measured:
        return _empty("maxbatch-memory", title, "No probe measured: every search failed before its first probe ended.")
    # against a cgroup limit, the cgroup's own peak (what the limit counts); else the tree's peak memory
    y = "limit_peak_mb" if any(p.get("limit_peak_mb") is not None for p in measured) else "peak_memory_mb"
    models = _models(measured)
    fig = _subplots(models)
    seen: set[str] = set()
    for col, m in enumerate(models, 1):
        for key in dict.fromkeys(
            (p["framework"], p["device"], p["precision"]) for p in measured if p["model_name"] == m
        ):
            ps = sorted((p for p in measured if p["model_name"] == m and (p["framework"], p["device"], p["precision"]) == key),
                        key=lambda p: p["batch_size"])  # fmt: skip
            name = " ".join(key)
            fits = [p for p in ps if p["fits"] and p.get(y) is not None]
            fig.add_scatter(
                name=name, legendgroup=name, showlegend=_legend_once(seen, name), mode="lines+markers",
                line=dict(color=color(key[0])), x=[p["batch_size"] for p in fits], y=[p[y] for p in fits],
                hovertemplate="batch %{x}: %{y:.0f} MiB", row=1, col=col,
            )  # fmt: skip
            failed = [p for p in ps if not p["fits"]]
            if failed:
                fig.add_scatter(
                    name=f"{name} out of memory", legendgroup=name, showlegend=False, mode="markers",
                    marker=dict(symbol="x", size=11, color=color(key[0])), x=[p["batch_size"] for p in failed],
                    y=[p.get(y) for p in failed], hovertemplate="batch %{x}: out of memory",
                    row=1, col=col,
                )  # fmt: skip
    limits = {r["memory_limit_mb"] for r in searches if r.get("memory_limit_mb")}
    for limit in limits:
        fig.add_hline(y=limit, line_dash="dot", annotation_text=f"memory_limit_mb {limit:g}")
    fig.update_xaxes(type="log", title_text="batch size")
    what = "peak in the cell's memory cgroup" if y == "limit_peak_mb" else "peak memory (process tree)"
    fig.update_yaxes(title_text=f"{what} (MiB)", col=1)
    return _figure("maxbatch-memory", title, fig)


def memory(rows: list[Row]) -> Chart:
    title = "Memory: peak and average"
    ok = [r for r in recommend.ok_rows(rows) if r.get("peak_memory_mb") is not None]
    if not ok:
        return _empty("memory", title, "No memory figures to show: no cell finished ok with a memory measurement.")
    x = [_label(r) for r in ok]
    fig = go.Figure()
    fig.add_bar(name="peak", x=x, y=[r["peak_memory_mb"] for r in ok], marker_color="#37474f")
    fig.add_bar(name="average", x=x, y=[r.get("avg_memory_mb") for r in ok], marker_color="#90a4ae")
    fig.update_layout(barmode="group", yaxis_title="MiB")
    return _figure("memory", title, fig)


STEP_PARTS = [  # (column, label, colour): a step's time by part (workers/common/profile.py)
    ("step_data_s", "data", "#8d6e63"),
    ("step_forward_s", "forward", "#1e88e5"),
    ("step_backward_s", "backward", "#43a047"),
    ("step_optimizer_s", "optimizer", "#fb8c00"),
    ("step_other_s", "other", "#9e9e9e"),
]
MEMORY_PARTS = [
    ("memory_params_mb", "parameters", "#3949ab"),
    ("memory_grads_mb", "gradients", "#00897b"),
    ("memory_optimizer_mb", "optimizer state", "#f4511e"),
    ("memory_activations_mb", "activations and workspace", "#8e24aa"),
]


def _stacked(cid: str, title: str, rows: list[Row], parts: list[tuple[str, str, str]], unit: str, why: str) -> Chart:
    ok = [r for r in recommend.ok_rows(rows) if all(r.get(col) is not None for col, _, _ in parts)]
    if not ok:
        return _empty(cid, title, why)
    x = [_label(r) for r in ok]
    scale = 1000.0 if unit == "ms" else 1.0
    fig = go.Figure()
    for col, name, colour in parts:
        fig.add_bar(name=name, x=x, y=[r[col] * scale for r in ok], marker_color=colour)
    fig.update_layout(barmode="stack", yaxis_title=unit)
    return _figure(cid, title, fig)


def step_breakdown(rows: list[Row]) -> Chart:
    return _stacked(
        "step-breakdown",
        "Where a training step's time goes (profiled steps, ms)",
        rows,
        STEP_PARTS,
        "ms",
        "No step-time breakdown: no cell finished ok with profiled steps (profile_steps: 0, or data-parallel cells).",
    )


def memory_breakdown(rows: list[Row]) -> Chart:
    return _stacked(
        "memory-breakdown",
        "Memory by part (parameters, gradients and optimizer state computed; activations measured)",
        rows,
        MEMORY_PARTS,
        "MiB",
        "No memory breakdown: no cell finished ok with a measured peak.",
    )


def latency(rows: list[Row]) -> Chart:
    title = "Inference latency distributions"
    ok = [
        r
        for r in recommend.ok_rows(rows)
        if len(r.get("inference_times_ms") or []) or len(r.get("inference_b1_times_ms") or [])
    ]
    if not ok:
        return _empty("latency", title, "No inference latency to show: no cell finished ok with timed inference.")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["batch 1 (every cell pooled)", "the cell's batch size"])
    seen: set[str] = set()
    pooled: dict[str, list[float]] = {}  # batch-1 latency does not depend on the training batch: one box each
    for r in ok:
        pooled.setdefault(_label(r, "batch"), []).extend(r.get("inference_b1_times_ms") or [])
    for estimate in recommend.latency_estimates(ok):  # the verdict's figure and its interval
        fig.add_scatter(
            x=[estimate.value], y=[estimate.label], mode="markers", marker_symbol="diamond", marker_color="#222",
            error_x=dict(type="data", symmetric=False, array=[(estimate.high or estimate.value) - estimate.value],
                         arrayminus=[estimate.value - (estimate.low or estimate.value)]),
            hovertext=f"median {estimate.value:.3g} ms, 95% interval {'across runs' if estimate.kind == 'runs' else 'within one run'}",
            showlegend=False, row=1, col=1,
        )  # fmt: skip
    for r in ok:
        for col, key, label in ((1, "inference_b1_times_ms", _label(r, "batch")), (2, "inference_times_ms", _label(r))):
            samples = list(r.get(key) or [])
            if col == 1:
                if label not in pooled:
                    continue
                samples = pooled.pop(label)
            if samples:
                fig.add_box(
                    x=samples,
                    name=label,
                    legendgroup=r["framework"],
                    showlegend=_legend_once(seen, r["framework"]) and col == 1,
                    marker_color=color(r["framework"]),
                    boxpoints=False,
                    row=1,
                    col=col,
                )
    fig.update_xaxes(type="log", title_text="ms per forward pass")
    fig.update_layout(showlegend=False)
    return _figure("latency", title, fig, height=max(360, 60 + 28 * len(ok)))


def latency_percentiles(rows: list[Row]) -> Chart:
    title = "Inference latency p50 / p95 / p99 at the cell's batch size"
    ok = [r for r in recommend.ok_rows(rows) if r.get("inference_latency_p50_ms") is not None]
    if not ok:
        return _empty("latency-pct", title, "No inference latency to show: no cell finished ok with timed inference.")
    fig = go.Figure()
    for q, c in (("p50", "#90caf9"), ("p95", "#1e88e5"), ("p99", "#0d47a1")):
        fig.add_bar(name=q, x=[_label(r) for r in ok], y=[r[f"inference_latency_{q}_ms"] for r in ok], marker_color=c)
    fig.update_layout(barmode="group", yaxis_title="ms", yaxis_type="log")
    return _figure("latency-pct", title, fig)


def epochs(rows: list[Row]) -> Chart:
    title = "Loss and accuracy per epoch"
    ok = [r for r in recommend.ok_rows(rows) if len(r.get("epochs_detail") or [])]
    if not ok:
        return _empty("epochs", title, "No per-epoch figures to show: no cell finished ok.")
    models = _models(ok)
    fig = make_subplots(
        rows=2,
        cols=len(models),
        subplot_titles=[f"{m}: train loss" for m in models] + [f"{m}: val accuracy" for m in models],
        vertical_spacing=0.15,
    )
    seen: set[str] = set()
    for r in ok:
        ep = list(r["epochs_detail"])
        col = models.index(r["model_name"]) + 1
        name = _label(r, "model")
        for row, key in ((1, "train_loss"), (2, "val_accuracy")):
            fig.add_scatter(
                x=[e["epoch"] + 1 for e in ep],
                y=[e[key] for e in ep],
                name=name,
                legendgroup=name,
                showlegend=_legend_once(seen, name),
                mode="lines+markers",
                line=dict(color=color(r["framework"]), dash="solid" if r["precision"] == "fp32" else "dash"),
                row=row,
                col=col,
            )
    fig.update_xaxes(title_text="epoch", row=2)
    return _figure("epochs", title, fig, height=620)


def compile_time(rows: list[Row]) -> Chart:
    title = "Warm-up: first step and compile time"
    ok = [r for r in recommend.ok_rows(rows) if r.get("first_step_s") is not None]
    if not ok:
        return _empty("compile", title, "No warm-up figures to show: no cell finished ok.")
    x = [_label(r) for r in ok]
    fig = go.Figure()
    fig.add_bar(name="first step (s)", x=x, y=[r["first_step_s"] for r in ok], marker_color="#6d4c41")
    fig.add_bar(
        name="first step − median step (s): compilation; eager frameworks' first-call overhead",
        x=x,
        y=[r.get("compile_time_s") for r in ok],
        marker_color="#bcaaa4",
    )
    fig.update_layout(barmode="group", yaxis_title="seconds")
    return _figure("compile", title, fig)


def mfu(rows: list[Row]) -> Chart:
    title = "Model FLOPs utilisation"
    ok = [r for r in recommend.ok_rows(rows) if r.get("mfu") is not None]
    if not ok:
        return _empty(
            "mfu", title, "No MFU to show: no calibration cell measured this device's peak (set calibrate: true)."
        )
    fig = go.Figure()
    for fw in sorted({r["framework"] for r in ok}):
        rs = [r for r in ok if r["framework"] == fw]
        fig.add_bar(
            name=fw,
            marker_color=color(fw),
            x=[_label(r, "framework") for r in rs],
            y=[100 * r["mfu"] for r in rs],
            customdata=[[r["achieved_tflops"], r["peak_tflops"]] for r in rs],
            hovertemplate="%{y:.1f}% (%{customdata[0]:.3g} of %{customdata[1]:.3g} TFLOP/s)",
        )
    fig.update_layout(barmode="group", yaxis_title="% of the measured matmul peak")
    return _figure("mfu", title, fig)


def gpu(rows: list[Row]) -> Chart:
    title = "GPU utilisation and energy"
    ok = [
        r
        for r in recommend.ok_rows(rows)
        if r.get("gpu_utilization_pct") is not None or r.get("gpu_energy_j") is not None
    ]
    if not ok:
        return _empty(
            "gpu", title, "No GPU utilisation or energy to show: no cell was measured on an NVIDIA GPU (NVML)."
        )
    x = [_label(r) for r in ok]
    util = [r.get("gpu_utilization_pct") for r in ok]
    energy = [r.get("gpu_energy_j") for r in ok]
    panels = [
        (t, y)
        for t, y in (("utilisation (%)", util), ("energy over the whole cell (J)", energy))
        if any(v is not None for v in y)
    ]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels])
    for col, (t, y) in enumerate(panels, 1):
        fig.add_bar(name=t, x=x, y=y, row=1, col=col, showlegend=False)
    return _figure("gpu", title, fig)


def pareto(rows: list[Row]) -> list[Chart]:
    """Per model: training throughput against p99 latency, peak memory and validation accuracy,
    the cells no other cell beats on both axes joined by a line."""
    ok = [r for r in recommend.ok_rows(rows) if r.get("samples_per_second") is not None]
    if not ok:
        return [_empty("pareto", "Trade-offs", "No trade-offs to show: no cell finished ok.")]
    axes = (
        ("inference_latency_p99_ms", "p99 inference latency (ms)", False, 1.0),
        ("peak_memory_mb", "peak memory (MiB)", False, 1.0),
        ("final_val_accuracy", "val accuracy (%)", True, 100.0),
    )
    charts = []
    for m in _models(ok):
        rs = [r for r in ok if r["model_name"] == m]
        present = [a for a in axes if any(r.get(a[0]) is not None for r in rs)]
        if not present:
            charts.append(_empty(f"pareto-{m}", f"Trade-offs: {m}", "No latency, memory or accuracy to trade off."))
            continue
        fig = make_subplots(rows=1, cols=len(present), subplot_titles=[a[1] for a in present])
        seen: set[str] = set()
        for col, (key, _, up, scale) in enumerate(present, 1):
            pts = [r for r in rs if r.get(key) is not None]
            front = recommend.pareto_front([(r[key] * scale, r["samples_per_second"]) for r in pts], (up, True))
            on = sorted([r for r, f in zip(pts, front, strict=True) if f], key=lambda r: r[key])
            fig.add_scatter(
                x=[r[key] * scale for r in on],
                y=[r["samples_per_second"] for r in on],
                mode="lines",
                line=dict(color="#9e9e9e", dash="dot"),
                showlegend=False,
                hoverinfo="skip",
                row=1,
                col=col,
            )
            for fw in sorted({r["framework"] for r in pts}):
                fr = [(r, f) for r, f in zip(pts, front, strict=True) if r["framework"] == fw]
                fig.add_scatter(
                    x=[r[key] * scale for r, _ in fr],
                    y=[r["samples_per_second"] for r, _ in fr],
                    text=[_label(r, "model") + (" (Pareto)" if f else "") for r, f in fr],
                    mode="markers",
                    name=fw,
                    legendgroup=fw,
                    showlegend=_legend_once(seen, fw),
                    marker=dict(
                        color=color(fw),
                        size=[13 if f else 7 for _, f in fr],
                        symbol=["diamond" if f else "circle" for _, f in fr],
                    ),
                    hovertemplate="%{text}<br>%{x:.3g}, %{y:.3g} samples/s",
                    row=1,
                    col=col,
                )
        fig.update_yaxes(title_text="training samples/s", col=1)
        charts.append(_figure(f"pareto-{m}", f"Trade-offs: {m}", fig, height=400))
    return charts


# a big grid's per-cell charts draw this many cells of each model (a bar, box or line each: thousands
# of them make a page that takes minutes to open and a chart no one can read); the tables keep every cell
DRAWN_PER_MODEL = 24


def drawn_cells(rows: list[Row], per_model: int = DRAWN_PER_MODEL) -> tuple[list[Row], str]:
    """The ok cells a per-cell chart draws: every one, or where a model has more than `per_model`, its
    `per_model` of highest training throughput; and the words for the chart's title ('' where all)."""
    ok = recommend.ok_rows(rows)
    models = _models(ok)
    by_model = {m: [r for r in ok if r["model_name"] == m] for m in models}
    if all(len(rs) <= per_model for rs in by_model.values()):
        return ok, ""
    kept = []
    for rs in by_model.values():
        ranked = sorted(rs, key=lambda r: -(r.get("samples_per_second") or 0.0))
        kept += ranked[:per_model]
    return kept, f"the {per_model} of highest training throughput of each model, {len(kept):,} of {len(ok):,} cells"


def figures(rows: list[Row]) -> list[Chart]:
    """Every chart of ALL; those that draw a mark per cell drawn from `drawn_cells`, titled so."""
    kept, note = drawn_cells(rows)
    out = []
    for chart in ALL:
        if note and chart in PER_CELL:
            c = chart(kept)
            c.title = f"{c.title} ({note})"
            out.append(c)
        else:
            out.append(chart(rows))
    return out


ALL: list[Callable[[list[Row]], Chart]] = [
    throughput,
    batch_scaling,
    precision_speedup,
    device_speedup,
    data_parallel_scaling,
    memory,
    step_breakdown,
    memory_breakdown,
    latency,
    latency_percentiles,
    epochs,
    compile_time,
    mfu,
    gpu,
]
PER_CELL = {  # the charts with a mark per cell (the others draw a line per series or a ratio per pair)
    throughput, memory, step_breakdown, memory_breakdown, latency, latency_percentiles, epochs, compile_time, mfu, gpu,
}  # fmt: skip
