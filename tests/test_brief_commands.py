"""The brief's command lines work as written, beside today's forms: `run --config FILE`, space-separated
filter values, model families (`--models cnn`), a device the suite lacks (`--devices cuda:0`: the suite
runs there), `report --results FILE_OR_DIR --output DIR`, and `compare` given two results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlbench import cli, orchestrator
from mlbench.config import ConfigError, apply_filters, family_models, load_suite, parse_suite
from tests.conftest import ROOT, suite_dict
from tests.conftest import cli as run_cli
from tests.test_report import row

QUICK = str(ROOT / "configs" / "quick.yaml")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--frameworks", "pytorch", "tensorflow"], ["--frameworks", "pytorch", "--frameworks", "tensorflow"]),
        (
            ["x.yaml", "--models", "cnn", "mlp", "--resume"],
            ["x.yaml", "--models", "cnn", "--models", "mlp", "--resume"],
        ),
        (["--models", "cnn", "configs/quick.yaml"], ["--models", "cnn", "configs/quick.yaml"]),  # a file ends it
        (["--devices=cuda:0", "cpu:0,1"], ["--devices=cuda:0", "--devices", "cpu:0,1"]),
        (["--name", "a", "b"], ["--name", "a", "b"]),  # only the filters take several words
        (["--batch-sizes", "32", "64", "--", "x"], ["--batch-sizes", "32", "--batch-sizes", "64", "--", "x"]),
    ],
)
def test_filters_take_space_separated_values(args: list[str], expected: list[str]) -> None:
    assert cli.spread_filters(args) == expected


def test_model_families_and_a_device_the_suite_lacks() -> None:
    suite = load_suite(QUICK)  # cpu only; mlp, resnet18, resnet34, bert
    assert family_models("cnn") == ["resnet18", "resnet34"] and family_models("transformer") == ["bert"]
    narrowed, only, notes = apply_filters(suite, {"model": ["cnn"], "device": ["cpu"]}, "quick.yaml")
    assert narrowed is suite and only["model"] == ["resnet18", "resnet34"] and not notes
    moved, only, notes = apply_filters(suite, {"model": ["transformer"], "device": ["cuda:0"]}, "quick.yaml")
    assert moved.devices == ["cuda:0"] and only == {"model": ["bert"], "device": []}
    assert notes == ["--devices cuda:0: this suite lists cpu; running this suite on cuda:0 instead"]
    small = parse_suite({**suite.model_dump(), "models": ["mlp"]})
    with pytest.raises(ConfigError, match=r"--models: 'cnn' \(resnet18, resnet34\) is not in this suite's grid"):
        apply_filters(small, {"model": ["cnn"]})
    with pytest.raises(ConfigError, match="--devices: "):
        apply_filters(suite, {"device": ["tpu:0"]})


@pytest.fixture
def planned(monkeypatch) -> dict[str, Any]:
    """`mlbench run` in-process, stopped where it would start running cells: what it would run."""
    seen: dict[str, Any] = {}

    def fake_run_suite(suite, *, only, runs_root, **kw) -> orchestrator.RunSummary:
        seen.update(suite=suite, only=only)
        return orchestrator.RunSummary(runs_root / suite.name)

    monkeypatch.setattr(orchestrator, "run_suite", fake_run_suite)
    monkeypatch.setattr(cli, "_sigterm_interrupts", lambda: None)  # pytest's own SIGTERM handling stays
    return seen


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args))


def test_run_config_option_and_the_default_suite(planned: dict[str, Any]) -> None:
    result = invoke("run", "--config", QUICK)
    assert result.exit_code == 0, result.output
    assert planned["suite"].name == "quick"
    result = invoke("run", "--frameworks", "pytorch", "tensorflow")  # no suite file: the default one
    assert result.exit_code == 0, result.output
    assert "running the default suite" in result.stderr and planned["suite"].name == "default"
    assert planned["only"]["framework"] == ["pytorch", "tensorflow"]
    assert invoke("run", QUICK, "--config", str(ROOT / "configs" / "parity.yaml")).exit_code == 2
    result = invoke("run", "--config", str(ROOT / "configs" / "quick_test.yaml"))  # the brief's name for it
    assert result.exit_code == 2 and f"did you mean {ROOT / 'configs' / 'quick.yaml'}?" in result.stderr


def test_run_on_a_device_the_suite_lacks(planned: dict[str, Any]) -> None:
    result = invoke("run", "--models", "cnn", "--devices", "cuda:0")
    assert result.exit_code == 0, result.output
    assert "running this suite on cuda:0 instead" in result.stderr
    assert planned["suite"].devices == ["cuda:0"] and planned["only"]["model"] == ["resnet18", "resnet34"]
    result = invoke("run", "--config", QUICK, "--frameworks", "pytorch", "nope")  # other filters only narrow
    assert result.exit_code == 2 and "'nope' is not in this suite's grid" in result.stderr


@pytest.mark.e2e
def test_a_gpu_run_skips_its_cells_with_the_reason_without_a_gpu(tmp_path: Path, write_suite) -> None:
    path = write_suite(suite_dict())
    proc = run_cli("run", "--config", str(path), "--models", "mlp", "--devices", "cuda:0", "--runs-dir", "runs",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "running this suite on cuda:0 instead" in proc.stderr
    (cell,) = pq.read_table(tmp_path / "runs" / "t" / "results.parquet").to_pylist()
    assert cell["device"] == "cuda:0" and cell["status"] in ("skipped", "ok")  # ok: a machine with a GPU
    if cell["status"] == "skipped":
        assert cell["reason"] and (tmp_path / "runs" / "t" / "RESULTS.md").is_file()


def results_file(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**r, "worker_module": f"workers.{r['framework']}_worker"} for r in rows]))
    return path


@pytest.mark.e2e
def test_report_from_a_results_file_into_a_folder(tmp_path: Path) -> None:
    source = results_file(tmp_path / "results" / "benchmark_results.json", [row("pytorch"), row("jax", sps=2000)])
    proc = run_cli("report", "--results", str(source), "--output", "report", cwd=tmp_path,
                   env={"MLBENCH_CHART_IMAGES": "0"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report" / "RESULTS.md").read_text()
    assert text.startswith("# mlbench results: benchmark_results") and "**jax** leads" in text
    assert (tmp_path / "report" / "report.html").is_file()
    assert str(Path("report") / "RESULTS.md") in proc.stdout
    bad = run_cli("report", "--results", str(tmp_path / "report" / "report.html"), cwd=tmp_path)
    assert bad.returncode == 2 and "give results.parquet or results.json" in bad.stderr


@pytest.mark.e2e
def test_compare_two_results_files(tmp_path: Path) -> None:
    a = results_file(tmp_path / "a" / "results.json", [row("pytorch", sps=1000)])
    b = results_file(tmp_path / "b" / "results.json", [row("pytorch", sps=400)])
    proc = run_cli("compare", str(a), str(b), "--fail-on-regression", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 60% slower: a regression, on the change alone
    assert "1 cell(s) in both runs: 1 regression(s)" in proc.stdout and "no raw step times" in proc.stdout
    assert (tmp_path / "b" / "compare-a-vs-b.txt").is_file()
