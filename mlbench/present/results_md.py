"""RESULTS.md: a run's results as Markdown people can publish (a code host's Markdown view, a terminal
pager), with the report's charts beside it as static SVG and PNG images rendered from the same Plotly
figures.

Everything in it is generated from the rows. Recommendations and analysis word mlbench/analysis's
verdicts: a lead counts only where the evidence tells the two apart (mlbench/analysis/evidence.py),
otherwise "cannot order", with why. A figure nothing measured is "—" or "not measured", never 0. A chart that cannot be rendered (no browser, no kaleido) says why in place of its image.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

import mlbench
from mlbench.analysis import bottleneck, parity, recommend
from mlbench.analysis.recommend import Effect, Recommendation, Row
from mlbench.present import charts, images
from mlbench.present.content import DATA_PATH_NOTE, RULES, STATUS_ORDER, Content, badge, data_path_cells, data_path_head
from mlbench.results import labels
from mlbench.results.labels import NA, band_text, label
from mlbench.results.store import atomic_write
from mlbench.runfolder import RunFolder

CHARTS_DIR = "charts"  # beside RESULTS.md: <chart id>.svg and .png


# --- text ------------------------------------------------------------------------------------------


def text(value: Any, own: bool = False) -> str:
    """Text safe in Markdown and in a table cell: one line, no pipe, tag, link or emphasis it did not
    mean. `own`: mlbench's own sentences, whose `code spans` are meant."""
    s = " ".join(str(value).split())
    for ch in ("\\", "|", "<", ">", "*") if own else ("\\", "|", "<", ">", "*", "`"):
        s = s.replace(ch, "\\" + ch)
    return s.replace("](", "]\\(")


def code(value: Any) -> str:
    """A value as an inline code span (environment strings, paths, reasons)."""
    s = " ".join(str(value).split()).replace("`", "'").replace("|", "\\|")
    return f"`{s}`" if s else NA


def num(value: Any, digits: int = 3) -> str:
    """A figure by the one number rule (results/labels.py), safe in Markdown."""
    return text(labels.num(value, digits))


def with_ci(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return NA
    return num(value) + (f" [{num(low)}–{num(high)}]" if low is not None and high is not None else "")


def table(head: list[str], body: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# --- the header and the environment ----------------------------------------------------------------


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)


def git_commit(repo: Path | None = None) -> str:
    """The commit of mlbench's source tree, marked where it has uncommitted changes; why not, if none."""
    repo = repo or Path(mlbench.__file__).resolve().parent.parent
    try:
        sha = _git(repo, "rev-parse", "--short=12", "HEAD")
        if sha.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git is not available)"
    return sha.stdout.strip() + (" with uncommitted changes" if dirty else "")


def header(content: Content, made: dict[str, str]) -> str:
    """Title, what made the document (command, date, commit) and what the run holds."""
    rows, suite, grid_size = content.rows, content.suite, content.grid_size
    started = sorted(str(r["started_at"]) for r in rows if r.get("started_at"))
    versions = sorted({str(r.get("mlbench_version") or "unknown") for r in rows})
    lines = [f"# mlbench results: {text(suite.get('name') or 'results')}", ""]
    if made.get("command"):
        lines.append(f"- **Command**: {code(made['command'])}")
    lines.append(f"- **Written**: {made['date']} by mlbench {mlbench.__version__}, commit {code(made['commit'])}")
    if started:
        lines.append(
            f"- **Measured**: {text(started[0])} to {text(started[-1])} (cells' start times) "
            f"by mlbench {', '.join(versions)}"
        )
    summary = ", ".join(f"{v} {k}" for k, v in sorted(content.counts.items())) or "none"
    of_grid = f" of the grid's {grid_size}" if grid_size is not None else ""
    lines.append(f"- **Cells**: {len(rows)}{of_grid} stored: {summary}")
    lines += [
        "",
        "Every figure here is generated from the run's rows by `mlbench report`; none is edited by hand. "
        f"{NA} means not measured. The interactive charts and every column of every cell are in `report.html`, "
        "written into the run folder beside `results.parquet`.",
        "",
        "Contents: [Environment](#environment) · [Warnings](#warnings) · [Recommendations](#recommendations) · "
        "[Analysis](#analysis) · [Results per model](#results-per-model) · [Charts](#charts) · "
        "[Configuration](#configuration)",
    ]
    return "\n".join(lines)


def _first(rows: list[Row], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key) is not None), None)


def environment_section(rows: list[Row], suite: dict[str, Any], env: dict[str, Any]) -> str:
    """Where and with what the cells ran: machine, software, settings."""

    def fact(key: str) -> Any:  # the run's environment record, else what the rows carry
        value = env.get(key)
        return value if value is not None else _first(rows, key)

    gpus = env.get("gpus") or sorted({r["gpu_model"] for r in rows if r.get("gpu_model")})
    frameworks = env.get("frameworks") or {r["framework"]: r.get("framework_version") for r in rows}
    hosts = sorted({r["hostname"] for r in rows if r.get("hostname")}) or [env.get("hostname")]
    facts = [
        ("hosts" if len(hosts) > 1 else "host", ", ".join(str(h) for h in hosts)),
        (
            "CPU",
            f"{fact('cpu_model')} ({fact('cpu_count_physical')} physical cores, {fact('cpu_count_logical')} logical)",
        ),
        ("memory", f"{num(fact('memory_total_gb'))} GB"),
        ("GPUs", ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus) or "none"),
        ("GPU driver, CUDA", f"{fact('gpu_driver') or NA}, {_first(rows, 'cuda_version') or NA}"),
        ("OS", fact("os")),
        ("Python", fact("python_version")),
        ("frameworks", ", ".join(f"{k} {v or NA}" for k, v in frameworks.items())),
        ("threads per worker", suite.get("threads") or "the physical cores (threads: null)"),
        ("malloc", suite.get("malloc", NA)),
        ("executor", ", ".join(sorted({str(r.get("executor") or "local") for r in rows})) or NA),
    ]
    return "## Environment\n\n" + table(["what", "this run"], [[k, code(v)] for k, v in facts])


def warnings_section(notes: list[str]) -> str:
    body = "\n".join(f"- {text(n, own=True)}" for n in notes) or "None."
    return f"## Warnings\n\n{body}"


# --- recommendations and the analysis ------------------------------------------------------------


INTERVALS = {"runs": "across runs", "within_run": "one run", "validation": "validation samples"}


def _estimate(e: recommend.Estimate | None, unit: str) -> str:
    if e is None:
        return NA
    kind = f" ({INTERVALS[e.kind]}{f', {e.runs} processes' if e.kind == 'runs' else ''})" if e.kind in INTERVALS else ""
    return f"{text(e.label)}: {with_ci(e.value, e.low, e.high)} {unit}{kind}"


def recommendations_section(recs: list[Recommendation]) -> str:
    """Per model and device, the best of each criterion and the runner-up, each with its interval."""
    out = [
        "## Recommendations",
        "",
        "Per model and device, each framework's best configuration on each criterion (95% intervals in "
        f"brackets, with what they cover). {RULES}",
    ]
    if not recs:
        return "\n".join([*out, "", "No recommendation: no cell finished ok."])
    for model, device in dict.fromkeys((r.model, r.device) for r in recs):
        body = [
            [
                text(r.title) + (f" ({text(r.note, own=True)})" if r.note else ""),
                "**clear winner**" if r.clear else badge(r),
                _estimate(r.winner, r.unit),
                _estimate(r.runner_up, r.unit),
            ]
            for r in recs
            if (r.model, r.device) == (model, device)
        ]
        out += [
            "",
            f"### {text(model)} on {text(device)}",
            "",
            table(["criterion", "verdict", "best", "runner-up"], body),
        ]
    return "\n".join(out)


NOT_MEASURED = {
    "gpu_utilization": "not measured: no cell here ran on an NVIDIA GPU (NVML samples it)",
    "inference_latency": "not measured: no ok cell timed batch-1 inference",
    "memory": "not measured: no ok cell has a peak memory figure",
    "accuracy": "not measured: no ok cell has a validation accuracy",
    "train_throughput": "not measured: no ok cell has a training throughput",
}


def leader_line(title: str, key: str, rec: Recommendation | None) -> str:
    """One criterion: who leads and by how much, or why the evidence cannot order them, or "not measured"."""
    if rec is None:
        return f"- **{text(title)}**: {NOT_MEASURED.get(key, 'not measured')}."
    note = f" ({text(rec.note, own=True)})" if rec.note else ""
    if not rec.clear:
        return f"- **{text(title)}**{note}: **{badge(rec)}**: {text(rec.verdict, own=True)}."
    frameworks = {e.row["framework"] for e in rec.candidates}
    who = rec.winner.row["framework"] if len(frameworks) > 1 else rec.winner.label
    return f"- **{text(title)}**{note}: **{text(who)}** leads: {text(rec.verdict, own=True)}."


def _throughput_phrase(e: Effect, what: str, base: str) -> str:
    change = f"{what} trains at {e.ratio:.2f}x the throughput of {base}"
    if e.verdict in ("faster", "slower"):
        return f"{change}: {e.verdict}, {e.why}"
    if e.verdict == "not ranked":
        return f"{change}; cannot tell: {e.why}"
    return f"{change}; cannot tell: {e.why}"


def effect_line(e: Effect, what: str, base: str, where: str) -> str:
    """One pair of cells: what the changed axis buys in throughput, accuracy and memory."""
    parts = [_throughput_phrase(e, what, base)]
    ur, ub = e.updates
    if ur is not None and ub is not None:  # the training each accuracy comes from
        parts.append(f"{ur} optimizer updates against {ub}" if ur != ub else f"{ur} optimizer updates each")
    if e.accuracy_delta_pts is not None:
        if e.accuracy_verdict.startswith("not comparable"):
            parts.append(f"validation accuracy {e.accuracy_delta_pts:+.1f} points, {e.accuracy_verdict}")
        else:
            acc = {"higher": "higher beyond", "lower": "lower beyond"}.get(e.accuracy_verdict, "within")
            parts.append(f"validation accuracy {e.accuracy_delta_pts:+.1f} points ({acc} the 95% intervals)")
    if e.memory_ratio is not None:
        parts.append(f"peak memory {e.memory_ratio:.2f}x ({e.memory_verdict})")
    return f"- {text(where)}: {text('; '.join(parts), own=True)}."


EFFECTS = (  # what an axis buys: key, heading, why where the run has no such pair of cells
    ("precision", "What mixed precision buys", "no configuration ran both fp32 and a mixed precision"),
    ("batch", "What batch size buys", "no configuration ran at two batch sizes"),
    ("device", "What a second device buys", "no configuration ran on both the CPU and a GPU, nor data parallel"),
    ("determinism", "What deterministic kernels cost", "no configuration ran with and without `deterministic`"),
)


def effect_lines(content: Content, model: str) -> dict[str, list[str]]:
    """What precision, batch size and a second device buy for one model, a line per pair of cells."""
    mine = {key: [e for e in found if e.row["model_name"] == model] for key, found in content.effects.items()}
    precision = [
        effect_line(e, e.row["precision"], "fp32", f"{e.row['framework']} {e.row['device']} bs{e.row['batch_size']}")
        for e in mine["precision"]
    ]
    batch = [
        effect_line(
            e, f"bs{e.row['batch_size']}", f"bs{e.base['batch_size']}",
            f"{e.row['framework']} {e.row['device']} {e.row['precision']}",
        )
        for e in mine["batch"]
    ]  # fmt: skip
    device = [
        effect_line(e, e.row["device"], "the CPU", f"{e.row['framework']} {e.row['precision']} bs{e.row['batch_size']}")
        for e in mine["device"]
    ] + [f"- {text(v.text, own=True)}" for v in content.scaling if v.row["model_name"] == model]
    determinism = [
        effect_line(
            e, "deterministic kernels", "the defaults",
            f"{e.row['framework']} {e.row['device']} {e.row['precision']} bs{e.row['batch_size']}",
        )
        for e in mine["determinism"]
    ]  # fmt: skip
    return {"precision": precision, "batch": batch, "device": device, "determinism": determinism}


def measured_axes(content: Content) -> set[str]:
    """The axes (precision, batch, device, determinism) some pair of cells of this run varies alone."""
    found = {key for key, effects in content.effects.items() if effects}
    return found | ({"device"} if content.scaling else set())


def model_analysis(content: Content, model: str, measured: set[str]) -> list[str]:
    """One model: the leaders per device, then what precision, batch size and a second device buy
    (those the run measured for some model; the others are said once, for the whole run)."""
    out = ["", f"### {text(model)}"]
    for m, device, c, rec in content.leaders:
        if m != model:
            continue
        if c is recommend.CRITERIA[0]:
            out += ["", f"**On {text(device)}**", ""]
        out.append(leader_line(c.title, c.key, rec))
    lines = effect_lines(content, model)
    for key, title, why in EFFECTS:
        if key in measured:
            out += ["", f"**{title}**", "", *(lines[key] or [f"- Not measured for {text(model)}: {why}."])]
    return out + bottleneck_lines(content, model)


def bottleneck_lines(content: Content, model: str) -> list[str]:
    """The bottleneck verdict of each ok cell of the model, where the rows carry one (nothing otherwise)."""
    mine = [r for r in recommend.ok_rows(content.rows) if r["model_name"] == model and r.get("bottleneck")]
    if not mine:
        return []
    lines = []
    for r in mine:
        verdict = "no single part stands out" if r["bottleneck"] == "none" else r["bottleneck"]
        evidence = f" ({text(r['bottleneck_evidence'])})" if r.get("bottleneck_evidence") else ""
        lines.append(f"- {text(label(r))}: **{text(verdict)}**{evidence}")
    found = [v for v, rs in content.bottlenecks.items() if v != "none" and any(r["model_name"] == model for r in rs)]
    advice = [f"- {text(v)}: {text(bottleneck.ADVICE[v])}." for v in found]
    blind = [f"_{text(bottleneck.CPU_BLIND[0].upper() + bottleneck.CPU_BLIND[1:], own=True)}._", ""]
    on_cpu = any(str(r.get("device", "")).startswith("cpu") for r in mine)
    return [
        "", "**Bottlenecks**", "", *(blind if on_cpu else []), *lines,
        *(["", "What would help:", "", *advice] if advice else []),
    ]  # fmt: skip


def analysis_section(content: Content) -> str:
    ok = recommend.ok_rows(content.rows)
    out = [
        "## Analysis",
        "",
        f"Generated from the rows, not written by hand. {RULES} What precision, batch size and a second "
        "device buy compares cells equal in every other axis; accuracy only between cells that made as many "
        "optimizer updates.",
    ]
    if not ok:
        return "\n".join([*out, "", "Nothing to analyse: no cell finished ok."])
    measured = measured_axes(content)
    missing = [f"{title.lower()} ({why})" for key, title, why in EFFECTS if key not in measured]
    if missing:
        out += ["", f"Not measured in this run: {'; '.join(missing)}."]
    for model in dict.fromkeys(r["model_name"] for r in ok):
        out += model_analysis(content, model, measured)
    return "\n".join(out)


# --- the figures per model -------------------------------------------------------------------------


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _latencies(r: Row, prefix: str) -> str:
    values = [r.get(f"{prefix}_{q}_ms") for q in ("mean", "p50", "p95", "p99")]
    return NA if all(v is None for v in values) else " / ".join(num(v) for v in values)


def training_table(rows: list[Row]) -> str:
    gpu = any(r.get("gpu_utilization_pct") is not None for r in rows)
    head = ["framework", "device", "precision", "batch", "samples/s [95% CI]", "step CV", "train s", "peak MiB",
            "avg MiB", "val acc % [95% CI]"] + (["GPU util %"] if gpu else [])  # fmt: skip
    body = []
    for r in rows:
        acc = recommend.accuracy_estimate(r)
        cv = num(_pct(r.get("step_time_cv")), 2) + ("% ⚠" if r.get("noisy") else "%") if r.get("step_time_cv") else NA
        body.append(
            [text(r["framework"]), text(r["device"]), text(r["precision"]), num(r["batch_size"]),
             with_ci(r.get("samples_per_second"), r.get("samples_per_second_ci_low"), r.get("samples_per_second_ci_high")),
             cv, num(r.get("total_train_time")), num(r.get("peak_memory_mb")), num(r.get("avg_memory_mb")),
             with_ci(acc.value, acc.low, acc.high) if acc else NA]
            + ([num(r.get("gpu_utilization_pct"))] if gpu else [])
        )  # fmt: skip
    return table(head, body)


def inference_table(rows: list[Row]) -> str:
    head = ["framework", "device", "precision", "batch", "batch 1: mean / p50 / p95 / p99 ms",
            "the cell's batch: mean / p50 / p95 / p99 ms", "parameters", "on disk MiB"]  # fmt: skip
    body = [
        [text(r["framework"]), text(r["device"]), text(r["precision"]), num(r["batch_size"]),
         _latencies(r, "inference_b1_latency"), _latencies(r, "inference_latency"),
         num(r.get("num_parameters")), num(r.get("model_size_mb"))]
        for r in rows
    ]  # fmt: skip
    return table(head, body)


def parity_lines(rows: list[Row], tolerance: Any) -> list[str]:
    """verify's verdict on the model and the accuracy parity of each group of cells."""
    passed = _first(rows, "verify_passed")
    detail = _first(rows, "verify_detail")
    verdict = {None: "not run", True: "the same model in every framework", False: "**DIFFERENT**"}[passed]
    out = [f"- mlbench verify: {verdict}" + (f" ({text(detail)})" if detail else "")]
    groups: dict[tuple[Any, ...], Row] = {}
    for r in recommend.ok_rows(rows):
        groups.setdefault((r["device"], r["precision"], r["batch_size"]), r)
    for (device, precision, batch), r in groups.items():
        said = text(parity.describe(r, tolerance))
        if r.get("accuracy_parity_verdict") == "different":
            said = f"**{said}**"
        out.append(f"- accuracy parity, {text(device)} {text(precision)} bs{batch}: {said}")
    return out


def models_section(rows: list[Row], suite: dict[str, Any]) -> str:
    ok = recommend.ok_rows(rows)
    timed = recommend.first_seed(ok)  # one row a configuration; parity reads every seed
    out = ["## Results per model"]
    sources = sorted({str(r["memory_source"]) for r in ok if r.get("memory_source")})
    if sources:
        out += [
            "",
            "Memory: " + "; ".join(code(s) for s in sources) + ". Step CV ⚠: a robust spread above 10% (a single "
            "run then needs a wider gap to be ranked).",
        ]
    if len(timed) < len(ok):
        out += ["", "Training and inference figures are each configuration's first seed; parity reads every seed."]
    if not ok:
        out += ["", "No cell finished ok."]
    for model in dict.fromkeys(r["model_name"] for r in ok):
        mine = [r for r in timed if r["model_name"] == model]
        out += ["", f"### {text(model)}", "", "Training", "", training_table(mine)]
        out += ["", "Inference latency and size", "", inference_table(mine)]
        every = [r for r in ok if r["model_name"] == model]
        out += ["", "Parity", "", *parity_lines(every, suite.get("accuracy_parity_pts"))]
    return "\n".join(out)


def data_path_section(rows: list[Row]) -> str:
    if not rows:
        return ""
    columns = data_path_head(rows)
    head = ["cell"] + [title for _, title in columns]
    body = []
    for r in rows:
        cells = data_path_cells(r)
        name = f"{r['framework']} {r['model_name']} {r['device']} {r['precision']} bs{r['batch_size']}"
        body.append(
            [text(name)]
            + [
                num(cells[k]) if cells[k] is None or isinstance(cells[k], (int, float)) else text(cells[k])
                for k, _ in columns
            ]
        )
    return "## Data path\n\n" + DATA_PATH_NOTE + "\n\n" + table(head, body)


def unfinished_section(rows: list[Row]) -> str:
    bad = sorted((r for r in rows if r["status"] != "ok"), key=lambda r: STATUS_ORDER.get(r["status"], 9))
    if not bad:
        return ""
    body = [[text(r["status"]), text(label(r)), code(r.get("reason") or "")] for r in bad]
    return "## Cells that did not finish ok\n\n" + table(["status", "cell", "reason"], body)


def maxbatch_section(searches: list[Row]) -> str:
    if not searches:
        return ""
    body = [
        [text(r["framework"]), text(r["model_name"]), text(r["device"]), text(r["precision"]),
         num(r["max_batch_size"]), num(r["first_failing_batch_size"]), text(band_text(r)),
         f"**{num(r['recommended_batch_size'])}**", code(f"{r['status']}: {r['reason']}")]
        for r in searches
    ]  # fmt: skip
    head = ["framework", "model", "device", "precision", "largest fit", "first out of memory",
            "the edge, every probe", "recommended (fit again)", "verdict"]  # fmt: skip
    return (
        "## Largest batch that fits (mlbench maxbatch)\n\n"
        "The edge moves between processes: the search's largest fit and first failure are run again, and the "
        "band is what every probe said; the recommended batch, the margin below its low end, fit once more "
        "in a fresh process.\n\n" + table(head, body)
    )


def config_section(suite: dict[str, Any]) -> str:
    dumped = yaml.safe_dump(suite, sort_keys=False, default_flow_style=None, width=110).strip()
    return f"## Configuration\n\nThe suite as the run stored it (`suite.json`):\n\n```yaml\n{dumped}\n```"


def charts_section(figures: list[charts.Chart], images: dict[str, str]) -> str:
    """Each chart as its PNG (the SVG linked beside it), or the sentence saying why there is no image."""
    out = ["## Charts", "", "The report's charts, rendered from the same figures (PNG shown; SVG for print)."]
    for c in figures:
        out += ["", f"### {text(c.title)}", ""]
        if not c.drawn:
            out.append(f"_{text(c.why, own=True)}_")
        elif images.get(c.id):
            out.append(f"_No image: {text(images[c.id], own=True)}. The interactive chart is in `report.html`._")
        else:
            png, svg = (f"{CHARTS_DIR}/{c.id}.{fmt}" for fmt in ("png", "svg"))
            out += [f"![{text(c.title)}]({png})", "", f"[SVG]({svg}) · [PNG]({png})"]
    return "\n".join(out)


# --- the whole document ------------------------------------------------------------------------------


def markdown(content: Content, images: dict[str, str], made: dict[str, str]) -> str:
    """RESULTS.md's text. `made`: command (may be empty), date and commit; `images`: what render said."""
    rows, suite = content.rows, content.suite
    sections = [
        header(content, made),
        environment_section(rows, suite, content.env),
        warnings_section(content.warnings),
        recommendations_section(content.recommendations),
        analysis_section(content),
        models_section(rows, suite),
        data_path_section(content.data_path),
        unfinished_section(rows),
        maxbatch_section(content.searches),
        charts_section(content.every_chart, images),
        config_section(suite),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def write(out_dir: Path, content: Content, *, command: str | None = None) -> Path:
    """Render the charts into out_dir/charts/ and write out_dir/RESULTS.md (atomically); its path."""
    found = images.render(content.every_chart, out_dir / CHARTS_DIR)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    made = {"command": command or "", "date": date, "commit": git_commit()}
    doc = markdown(content, found, made)
    path = RunFolder(out_dir).results_md
    atomic_write(path, lambda p: p.write_text(doc, encoding="utf-8"))
    return path
