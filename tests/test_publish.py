"""RESULTS.md from hand-made result sets: the analysis names a leader or says why it cannot order them for every
criterion from the rows' own intervals, says what precision, batch size and a second device buy, says
"not measured" instead of 0, escapes worker text; its charts render as SVG and PNG, or say why not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlbench.analysis import recommend
from mlbench.present import content, images, results_md
from tests.test_report import row

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(autouse=True)
def images_on(monkeypatch) -> None:
    """These tests render (tests/conftest.py turns images off for every other test's runs)."""
    monkeypatch.setenv(images.IMAGES_ENV, "1")


def doc(rows: list[dict], rendered: dict[str, str] | None = None, **kw) -> str:
    made = {"command": "python -m mlbench run x.yaml", "date": "2026-01-01 00:00 UTC", "commit": "abc123"}
    found = content.gather(rows, {"name": "t", "accuracy_parity_pts": 2.0}, {}, **kw)
    return results_md.markdown(found, rendered or {}, made)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def broken_links(path: Path) -> list[str]:
    targets = LINK.findall(path.read_text(encoding="utf-8"))
    return [t for t in targets if not t.startswith("#") and not (path.parent / t).is_file()]


def test_every_criterion_names_a_leader_or_no_clear_winner() -> None:
    rows = [
        row("pytorch", sps=2000, latency_ms=1.0, peak_memory_mb=400.0),
        row("jax", sps=1000, latency_ms=1.0, peak_memory_mb=800.0),
    ]
    text = section(doc(rows), "Analysis")
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "**pytorch** leads" in lines["Training throughput"] and "is 2.00x jax" in lines["Training throughput"]
    assert "cannot order" in lines["Inference latency (batch 1, median)"]  # the same latency
    assert "**pytorch** leads" in lines["Peak memory"] and "is 1/2.00 of jax" in lines["Peak memory"]
    assert "cannot order" in lines["Validation accuracy"]  # equal
    assert "not measured" in lines["GPU utilisation (training)"]  # no NVML on a CPU: never 0
    for criterion in recommend.CRITERIA:
        assert "leads" in lines[criterion.title] or "cannot order" in lines[criterion.title], criterion.title


def test_a_lead_inside_the_intervals_is_no_clear_winner() -> None:
    rows = [row("pytorch", sps=1000, spread=0.05), row("jax", sps=1040, spread=0.05)]
    line = next(x for x in doc(rows).splitlines() if x.startswith("- **Training throughput**"))
    assert "**cannot order**" in line and "within the between-run uncertainty" in line


def test_what_precision_batch_size_and_a_gpu_buy() -> None:
    rows = [
        row("pytorch", sps=1000),
        row("pytorch", sps=2500, precision="bf16", final_val_accuracy=0.88, cell_id="bf16"),
        row("pytorch", sps=1010, batch_size=64, peak_memory_mb=700.0, cell_id="bs64"),
        row("pytorch", sps=9000, device="cuda:0", cell_id="gpu", gpu_utilization_train_pct=80.0),
    ]
    text = section(doc(rows), "Analysis")
    precision = text.split("**What mixed precision buys**")[1].split("**")[0]
    assert "bf16 trains at 2.50x the throughput of fp32: faster, beyond the between-run uncertainty" in precision
    assert "validation accuracy -2.0 points (within the 95% intervals)" in precision
    batch = text.split("**What batch size buys**")[1].split("**")[0]
    assert "bs64 trains at 1.01x the throughput of bs32; cannot tell: within the between-run uncertainty" in batch
    # half the optimizer updates in the same epochs: its accuracy is not the batch size's doing
    assert "5 optimizer updates against 10" in batch and "not comparable: 5 against 10 updates" in batch
    assert "peak memory 1.40x (more)" in batch
    device = text.split("**What a second device buys**")[1]
    assert "cuda:0 trains at 9.00x the throughput of the CPU: faster, beyond the between-run uncertainty" in device
    gpu = next(x for x in text.splitlines() if x.startswith("- **GPU utilisation (training)** (compared at"))
    assert "**one ranked**: only pytorch" in gpu  # one GPU cell: nothing to rank it against


def test_what_the_run_did_not_measure_is_said_once() -> None:
    text = section(doc([row("pytorch"), row("jax"), row("jax", model="bert")]), "Analysis")
    assert text.count("Not measured in this run:") == 1
    assert "what mixed precision buys (no configuration ran both fp32 and a mixed precision)" in text
    assert "**What batch size buys**" not in text


def test_bottleneck_verdicts_where_the_rows_carry_them() -> None:
    rows = [row("pytorch", bottleneck="input pipeline", bottleneck_evidence="data wait 41% of the step"), row("jax")]
    assert "- pytorch mlp cpu fp32 bs32: **input pipeline** (data wait 41% of the step)" in doc(rows)
    assert "**Bottlenecks**" not in doc([row("pytorch"), row("jax")])  # columns absent or null: nothing said
    assert "bs32: **no single part stands out** (data 3%)" in doc(
        [row("jax", bottleneck="none", bottleneck_evidence="data 3%")]
    )


def test_figures_nothing_measured_are_dashes_and_worker_text_is_escaped() -> None:
    evil = "<script>alert(1)</script> | `x`"
    rows = [row("pytorch", peak_memory_mb=None, avg_memory_mb=None), row("jax", status="crashed", reason=evil)]
    text = doc(rows)
    training = section(text, "Results per model").split("\n| pytorch")[1].split("\n")[0]
    assert training.count("|") == 10 and "| — | — |" in training  # peak and avg memory: not 0
    assert "<script>" not in re.sub(r"`[^`]*`", "", text)  # only inside code spans, where it is text
    failed = section(text, "Cells that did not finish ok").splitlines()[-1]
    assert failed.startswith("| crashed | jax mlp cpu fp32 bs32 |") and failed.count(" | ") == 2  # the pipe escaped


def test_tables_and_header() -> None:
    text = doc([row("pytorch"), row("jax")], grid_size=3)
    assert text.startswith("# mlbench results: t\n")
    assert "- **Command**: `python -m mlbench run x.yaml`" in text and "commit `abc123`" in text
    assert "- **Cells**: 2 of the grid's 3 stored: 2 ok" in text
    recs = section(text, "Recommendations")
    assert (
        "| Training throughput | cannot order | pytorch fp32 bs32: 1,000 [990–1,010] samples/s (across runs, 5 processes) |"
        in recs
    )
    for heading in ("Environment", "Warnings", "Analysis", "Results per model", "Charts", "Configuration"):
        assert f"\n## {heading}\n" in text


def test_charts_say_why_they_have_no_image(tmp_path: Path, monkeypatch) -> None:
    rows = [row("pytorch"), row("jax")]
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser"))
    found = content.gather(rows, {"name": "t"}, {})
    path = results_md.write(tmp_path, found)
    text = path.read_text()
    drawn = [c for c in found.every_chart if c.drawn]
    assert text.count("_No image: no Chrome or Chromium found to render it") == len(drawn) > 0
    assert "_No batch-size scaling to show: no configuration ran at two batch sizes._" in text
    assert not broken_links(path) and not list(tmp_path.glob("charts/*.png"))
    monkeypatch.setenv(images.IMAGES_ENV, "0")
    text = results_md.write(tmp_path, found).read_text()
    assert f"_No image: images not rendered ({images.IMAGES_ENV}=0)." in text


@pytest.mark.e2e
def test_charts_render_as_svg_and_png(tmp_path: Path) -> None:
    pytest.importorskip("kaleido")
    if images.find_browser() is None:
        pytest.skip("no Chrome or Chromium here (`make browser`)")
    rows = [row("pytorch"), row("jax", sps=1500)]
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "stale.png").write_bytes(b"an image of an earlier report")
    found = content.gather(rows, {"name": "t"}, {})
    path = results_md.write(tmp_path, found)
    drawn = [c.id for c in found.every_chart if c.drawn]
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == sorted(
        f"{cid}.{fmt}" for cid in drawn for fmt in ("svg", "png")
    )
    assert (tmp_path / "charts" / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "charts" / "throughput.svg").read_bytes()[:500]
    text = path.read_text()
    assert "![Training throughput per model and framework](charts/throughput.png)" in text
    assert not broken_links(path) and "No image" not in text


def test_the_shipped_sample_holds_together() -> None:
    sample = ROOT / "docs" / "results" / "RESULTS.md"
    if not sample.is_file():
        pytest.skip("docs/results/ not generated yet (`make sample-results`)")
    text = sample.read_text(encoding="utf-8")
    assert "- **Command**: `" in text and "- **Written**: " in text and "commit `" in text
    assert not broken_links(sample)


@pytest.mark.e2e
def test_a_real_run_writes_results_md_with_its_images(shared_run: Path, tmp_path: Path) -> None:
    from tests.conftest import cli

    env = {images.IMAGES_ENV: "1"}  # the runs of the tests leave them out (tests/conftest.cli)
    proc = cli("report", "--results", str(shared_run), "--output", str(tmp_path), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp_path / "RESULTS.md"
    text = path.read_text()
    assert not broken_links(path)
    leaders = [line for line in section(text, "Analysis").splitlines() if line.startswith("- **")]
    per_model = len(recommend.CRITERIA) + 1  # and GPU utilisation, not measured on a CPU
    assert len(leaders) == 3 * per_model  # every model of the shared run
    assert all(any(w in x for w in ("leads", "cannot order", "one ranked", "not measured")) for x in leaders), leaders
    if images.find_browser() is not None:
        assert (tmp_path / "charts" / "throughput.png").is_file() and "No image" not in text
