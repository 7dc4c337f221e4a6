"""The layout of a run folder, named in one place: every module that reads or writes one asks here.

    runs/<name>/
      cells/<unit_id>.parquet     one row per cell (repeat), written atomically
      logs/<unit_id>.ndjson       the worker's raw event stream; logs/<unit_id>.stderr.log its stderr
      data/                       the datasets the workers read; cache/ the compile caches
      verify/                     verify's own run folder (logs, arrays); calibration cells log in logs/
      profiles/<unit_id>/         a cell's profiler trace, where the run keeps them (`profile: true`)
      suite.json, environment.json, journal.ndjson, .lock
      results.{parquet,csv,json}, epochs.{parquet,csv}, steps.parquet, repeats.parquet
      verify.json, parity.json, calibration.json, report.html, RESULTS.md and its charts/

A Ray node keeps the same layout for its own part (data, cache, logs) in a folder of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    root: Path

    # what the orchestrator writes as it runs
    @property
    def cells(self) -> Path:
        return self.root / "cells"

    def cell(self, unit_id: str) -> Path:
        return self.cells / f"{unit_id}.parquet"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def events_log(self, name: str) -> Path:
        return self.logs / f"{name}.ndjson"

    def stderr_log(self, name: str) -> Path:
        return self.logs / f"{name}.stderr.log"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def verify_runs(self) -> Path:
        return self.root / "verify"

    @property
    def suite(self) -> Path:
        return self.root / "suite.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def journal(self) -> Path:
        return self.root / "journal.ndjson"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    # what is rebuilt from the cell files
    def export(self, name: str) -> Path:
        """results.parquet, results.csv, epochs.parquet, ...: the exports by file name."""
        return self.root / name

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    @property
    def repeats(self) -> Path:
        return self.root / "repeats.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def results_md(self) -> Path:  # with its chart images in charts/ beside it
        return self.root / "RESULTS.md"

    @property
    def verify(self) -> Path:
        return self.root / "verify.json"

    @property
    def parity(self) -> Path:
        return self.root / "parity.json"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def maxbatch_runs(self) -> Path:  # a run folder of its own for the maxbatch probes' logs and data
        return self.root / "maxbatch_runs"

    @property
    def maxbatch_probes(self) -> Path:  # one file per probe, as it finishes (resume reads them)
        return self.root / "maxbatch"

    @property
    def maxbatch_probes_table(self) -> Path:
        return self.root / "maxbatch_probes.parquet"

    @property
    def maxbatch(self) -> Path:
        return self.root / "maxbatch.parquet"
