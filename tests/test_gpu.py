"""The GPU code paths, run for real where NVML sees an NVIDIA GPU (the `gpu` marker: skipped elsewhere,
saying why). `make gpu-smoke` is the longer script for a lent GPU machine."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import cli, suite_dict

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_a_cell_on_the_first_gpu_is_ok_with_gpu_figures(framework: str, tmp_path: Path) -> None:
    pytest.importorskip({"pytorch": "torch"}.get(framework, framework))
    suite = suite_dict(frameworks=[framework], devices=["cuda:0"], precisions=["fp32", "bf16"], calibrate=True)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    proc = cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet")
    assert set(df.status) == {"ok"}, df[["precision", "status", "reason"]]
    for _, r in df.iterrows():
        assert r.gpu_model and r.device_peak_allocated_mb > 0 and r.gpu_utilization_pct >= 0
        assert r.peak_tflops > 0 and 0 < r.mfu <= 1
