"""Shared helpers: tiny suites in a temporary folder, the CLI run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# every mlbench a test starts writes RESULTS.md without chart images (a Chromium per run: seconds each,
# and browser processes beside the fault tests' signals); tests/test_publish.py turns them on and renders
os.environ.setdefault("MLBENCH_CHART_IMAGES", "0")


def pytest_configure(config: pytest.Config) -> None:
    """One JAX compile cache for the whole session (the xdist workers inherit it), every program kept:
    the same tiny models compile in many tests' workers, and a cold cache at each session still
    compiles each program once. Removed at the end."""
    if os.environ.get("MLBENCH_COMPILE_CACHE") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import tempfile

    folder = tempfile.mkdtemp(prefix="mlbench-test-compile-cache-")
    os.environ["MLBENCH_COMPILE_CACHE"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    config._mlbench_compile_cache = folder  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_mlbench_compile_cache", None)
    if folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("MLBENCH_COMPILE_CACHE", None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where NVML sees an NVIDIA GPU; elsewhere they skip, saying why. Under
    pytest-xdist (`make test`), tests that share a real run go to one worker (`xdist_group`)."""
    if config.pluginmanager.hasplugin("xdist"):
        _group_shared_runs(items)
    for item in items:  # `make test` runs the serial tests from the files that say "mark.serial"
        if item.get_closest_marker("serial") and "mark.serial" not in Path(item.path).read_text():
            raise pytest.UsageError(f"{item.nodeid} is marked serial where its file does not say mark.serial")
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    from mlbench.process.gpus import NVML

    if not NVML.available():
        skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU: NVML does not answer ({NVML.error})")
        for item in gpu:
            item.add_marker(skip)


def _group_shared_runs(items: list[pytest.Item]) -> None:
    """One `xdist_group` for every set of tests joined by a module- or session-scoped fixture of this
    folder (a real run made once per worker process): `--dist loadgroup` then makes each such run once.
    Tests without one are spread one by one."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys: dict[pytest.Item, list[str]] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = [
            f"{Path(d.func.__code__.co_filename).stem}.{name}"
            for name, defs in (info.name2fixturedefs.items() if info else ())
            for d in defs[-1:]
            if d.scope in ("module", "session") and Path(d.func.__code__.co_filename).parent == ROOT / "tests"
        ]
        keys[item] = shared
        for key in shared[1:]:
            a, b = find(shared[0]), find(key)
            if a != b:
                parent[max(a, b)] = min(a, b)
    for item, shared in keys.items():
        if shared:
            item.add_marker(pytest.mark.xdist_group(find(shared[0])))


def suite_dict(**overrides: Any) -> dict[str, Any]:
    """A tiny valid suite (one PyTorch MLP cell) with overrides."""
    base: dict[str, Any] = {
        "name": "t",
        "frameworks": ["pytorch"],
        "models": ["mlp"],
        "devices": ["cpu"],
        "precisions": ["fp32"],
        "batch_sizes": [16],
        "epochs": 1,
        "seed": 0,
        "dataset": {"name": "synthetic", "train_samples": 128, "val_samples": 32},
        "warmup_steps": 2,
        "inference": {"warmup": 1, "runs": 5, "min_runs": 3, "max_s": 2},
        "calibrate": False,  # on where a test wants MFU (test_frameworks)
        "timeout_s": 120,
        "idle_timeout_s": 60,
        "monitor_interval_s": 0.05,
        # no steps timed by part after the timed window (seconds a TensorFlow or JAX cell): the tests of
        # the breakdown ask for them (the shared run, tests/test_profile.py)
        "profile_steps": 0,
        # one core a cell: `make test` runs two tests at once on two cores, and two workers with two
        # spinning threads each slowed a step sixfold
        "threads": 1,
    }
    base.update(overrides)
    return base


def fault_suite(*modes: str, **overrides: Any) -> dict[str, Any]:
    return suite_dict(frameworks=list(modes), workers={m: "tests.fault_worker" for m in modes}, **overrides)


@pytest.fixture(autouse=True)
def _keras_policy_put_back():
    """A TensorFlow backend built in a test's process sets Keras' global precision policy (a worker runs one
    cell, so it may); a later test's Keras model in that process must compute in float32 again."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def write_suite(tmp_path: Path):
    def _write(data: dict[str, Any], name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`python -m mlbench ARGS` as a user runs it."""
    # RESULTS.md without chart images (4 s of Chromium a run); tests/test_publish.py renders them for real
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MLBENCH_CHART_IMAGES": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mlbench", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def cli_here(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`mlbench ARGS` in this process (click's runner), for commands that only parse and validate: the
    same exit code, stdout and stderr as `cli` without a Python start that imports every dependency.
    Signal handlers a command installs are put back."""
    import contextlib
    import signal

    from click.testing import CliRunner

    from mlbench import cli as mlbench_cli

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.chdir(cwd):
            result = CliRunner().invoke(mlbench_cli.main, list(args))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def descendants_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def by_hand(module: str, data_dir: Path, *extra: str) -> list[str]:
    """A tiny MLP cell run by hand, as a person debugging one cell would."""
    return [
        sys.executable,
        "-m",
        module,
        "--model",
        "mlp",
        "--batch-size",
        "16",
        "--train-samples",
        "64",
        "--val-samples",
        "16",
        "--warmup-steps",
        "1",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


_NETNS: list[str] | None = None


def loopback_only_prefix() -> list[str]:
    """argv prefix that runs a command in a network namespace of its own holding only the loopback
    interface (a local Ray cluster then listens on 127.0.0.1 alone and can reach nothing else);
    [] where no namespace can be made here (the caller skips)."""
    global _NETNS
    if _NETNS is None:
        _NETNS = []
        for unshare in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
            argv = [*unshare, "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
            try:
                ok = subprocess.run([*argv, "true"], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                _NETNS = argv
                break
    return _NETNS


def verify_run(
    framework: str,
    model: str,
    device: str,
    run_dir: Path,
    timeout_s: float = 600,
    overrides: dict | None = None,
    module: str | None = None,
) -> tuple[Any, dict]:
    """One framework's `mlbench verify` task for one model on `device` (cpu, cpu:0,1), in its built-in
    worker or `module` (a test's deliberately broken one): the worker's outcome and its verify event
    (None when it did not finish)."""
    outcome, events = verify_models(framework, [model], device, run_dir, timeout_s, {model: overrides}, module)
    return outcome, events.get(model)


def verify_models(
    framework: str,
    models: list[str],
    device: str,
    run_dir: Path,
    timeout_s: float = 600,
    overrides: dict[str, dict | None] | None = None,
    module: str | None = None,
) -> tuple[Any, dict[str, dict]]:
    """The verify task of `models` in one worker process, as `mlbench verify` runs a framework's: the
    outcome and each model's verify event."""
    from mlbench.config import BUILTIN_WORKERS
    from mlbench.process import runner
    from mlbench.tasks import verify

    module = module or BUILTIN_WORKERS[framework]
    cell = verify.verify_cell(framework, models, module, overrides, 0, device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    outcome = runner.run_cell(
        cell, run_dir, module=module, timeout_s=timeout_s * len(models), idle_timeout_s=timeout_s,
        extra={"verify_dir": str(run_dir.resolve())}, threads=1,
    )  # fmt: skip
    return outcome, {e["model"]: e for e in outcome.events if e["event"] == "verify"}


# --- one real run that the tests reading a real run share ------------------------------------------

TINY = {  # tiny versions of the real architectures, so a cell takes seconds on 2 cores (no dropout:
    # the same weights and data give the same training curve in every framework)
    "resnet18": {"widths": [8, 16, 32, 64]},
    "bert": {"layers": 1, "hidden": 64, "heads": 2, "ffn": 128, "vocab_size": 512, "seq_len": 32, "dropout": 0.0},
}
SHARED_FRAMEWORKS = ["pytorch", "tensorflow", "jax"]
SHARED_MODELS = ["mlp", "resnet18", "bert"]
SHARED_CELLS = len(SHARED_FRAMEWORKS) * 5  # the mlp in three precisions, resnet18 and bert in fp32


def shared_suite(**overrides: Any) -> dict[str, Any]:
    """Every framework, each model small, the MLP in every precision too; two epochs; verify first, MFU
    against a calibration, a profile kept, on one thread (the calibration checked to run on it too)."""
    shared = {
        "name": "shared",
        "frameworks": SHARED_FRAMEWORKS,
        "models": SHARED_MODELS,
        "precisions": ["fp32", "bf16", "fp16"],
        "excludes": [{"model": ["resnet18", "bert"], "precision": ["bf16", "fp16"]}],
        "model_overrides": TINY,
        "dataset": {"name": "synthetic", "train_samples": 96, "val_samples": 64},
        "epochs": 2,
        "verify": True,
        "calibrate": True,
        "profile": True,
        "profile_steps": 5,
        "threads": 1,
    }
    return suite_dict(**{**shared, **overrides})


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Path:
    """The run folder of `shared_suite`, run once for the whole session: fp32 first (verified and
    calibrated), then the mixed-precision cells resumed into the same folder without calibrating them
    (a calibration a precision costs seconds, and no test reads their MFU). Tests that change a run
    copy it first (`copy_run`)."""
    for module in ("torch", "tensorflow", "jax"):
        pytest.importorskip(module)
    tmp = tmp_path_factory.mktemp("shared")
    (tmp / "fp32.yaml").write_text(yaml.safe_dump(shared_suite()))
    (tmp / "all.yaml").write_text(yaml.safe_dump(shared_suite(calibrate=False)))
    first = cli("run", "fp32.yaml", "--runs-dir", "runs", "--precisions", "fp32", cwd=tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    second = cli("run", "all.yaml", "--runs-dir", "runs", "--resume", cwd=tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    return tmp / "runs" / "shared"


def shared_verifies(framework: str, run: Path) -> dict[str, dict]:
    """The shared run's one-device verify events of `framework` (one process checked every model), by
    model: the side a data-parallel module's checks compare with."""
    from mlbench.runfolder import RunFolder

    for log in sorted((RunFolder(run).verify_runs / "logs").glob("*.ndjson")):
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        if any(e["event"] == "hello" and e["framework"] == framework for e in events):
            verified = {e["model"]: e for e in events if e["event"] == "verify" and e["device"] == "cpu"}
            if verified:  # (not a data-parallel check's process, should the shared run ever make one)
                return verified
    raise AssertionError(f"the shared run verified nothing in {framework}")


DATA_PARALLEL_MODELS = ["mlp", "resnet18"]  # what the data-parallel modules check on two CPU replicas


def two_device_verifies(framework: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, dict]]:
    """`framework`'s verify of DATA_PARALLEL_MODELS (small as TINY) on `cpu:0,1`, in one process as
    `mlbench verify` runs it: the outcome and each model's event."""
    folder = tmp_path_factory.mktemp(f"two-{framework}")
    models = DATA_PARALLEL_MODELS
    return verify_models(framework, models, "cpu:0,1", folder, overrides={m: TINY.get(m) for m in models})


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run folder, for a test that changes it (the shared one stays as it was)."""
    import shutil

    target = to / "runs" / run.name
    shutil.copytree(run, target)
    return target
