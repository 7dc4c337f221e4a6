"""Suite files: every shipped config validates; every kind of bad config gets one clear line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbench.config import ConfigError, Suite, load_suite, parse_suite
from tests.conftest import ROOT, cli, cli_here, suite_dict

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid(path: Path) -> None:
    suite = load_suite(path)
    assert suite.frameworks and suite.models and suite.batch_sizes


def test_defaults_are_filled_in() -> None:
    """Only the required keys given: every other key takes the default the README and config.py show."""
    s = parse_suite({"name": "d", "frameworks": ["pytorch"], "models": ["mlp"], "batch_sizes": [8]})
    assert s.devices == ["cpu"] and s.precisions == ["fp32"] and s.epochs == 1 and s.repeats == 1 and s.seed == 0
    assert s.timeout_s == 900 and s.idle_timeout_s == 300 and s.compile is False and s.calibrate is True
    assert s.dataset.name == "synthetic" and s.dataset.train_samples == 1024 and s.dataset.val_samples == 256
    assert s.malloc == "steady" and s.threads is None and s.executor == "local" and s.parallel == 1
    assert s.ray.address is None and s.warmup_steps == 5 and s.inference.runs == 100
    assert s.worker_module("pytorch") == "workers.pytorch_worker"


def test_workers_map_adds_and_overrides_frameworks() -> None:
    s = parse_suite(suite_dict(frameworks=["pytorch", "mine"], workers={"mine": "my_pkg.worker", "pytorch": "alt.w"}))
    assert s.worker_module("mine") == "my_pkg.worker" and s.worker_module("pytorch") == "alt.w"


# (YAML text or suite overrides, fragments the one-line message must contain)
BAD = [
    ("", ["empty"]),
    ("- a\n- b\n", ["top level must be a mapping"]),
    ("name: x\nname: y\n", ["line 2", "'name' appears twice"]),
    ("name: !!python/object/apply:os.system ['true']\n", ["tag refused"]),
    ("name: [unclosed\n", ["not valid YAML"]),
    ({"epoch": 3}, ["epoch: unknown key", "did you mean 'epochs'"]),
    (
        {"frameworks": ["pytorh"]},
        ["unknown framework 'pytorh'", "did you mean 'pytorch'", "allowed: pytorch, tensorflow, jax"],
    ),
    ({"models": ["resnet19"]}, ["unknown model 'resnet19'", "did you mean 'resnet18'"]),
    ({"devices": ["gpu0"]}, ["device 'gpu0'", "cpu, cuda:N"]),
    ({"precisions": ["fp8"]}, ["precisions[0]", "'fp32', 'tf32', 'fp16' or 'bf16'"]),
    ({"batch_sizes": [32, 0]}, ["batch_sizes[1]", "greater than 0", "got 0"]),
    ({"batch_sizes": [-4]}, ["batch_sizes[0]", "greater than 0"]),
    ({"batch_sizes": []}, ["batch_sizes", "at least 1"]),
    ({"batch_sizes": "32"}, ["batch_sizes", "valid list"]),
    ({"batch_sizes": [32, 32]}, ["listed more than once: 32"]),
    ({"epochs": "two"}, ["epochs", "valid integer", "got 'two'"]),
    ({"dataset": {"name": "imagenet"}}, ["dataset.name", "'synthetic', 'cifar10', 'sst2', 'covertype' or 'public'"]),
    ({"dataset": {"format": ["memory", "memory"]}}, ["dataset.format", "listed more than once"]),
    ({"dataset": {"shards": 2000}}, ["dataset: shards", "2000 files for 1024 training samples"]),
    ({"dataset": {"train_sample": 5}}, ["dataset.train_sample: unknown key", "did you mean 'train_samples'"]),
    ({"timeout_s": -1}, ["timeout_s", "greater than 0"]),
    ({"name": "../evil"}, ["name", "pattern"]),
    ({"model_overrides": {"bert": {"layer": 2}}}, ["unknown setting of bert", "did you mean 'layers'"]),
    ({"model_overrides": {"bert": {"hidden": 250}}}, ["model_overrides.bert", "divide into heads"]),
    ({"excludes": [{"modle": "mlp"}]}, ["unknown key of excludes[0] 'modle'", "did you mean 'model'"]),
    ({"workers": {"x": "not a module!"}}, ["not a Python module path"]),
    ({"malloc": "jemalloc"}, ["malloc", "'steady' or 'system'", "got 'jemalloc'"]),
]


def _materialise(tmp_path: Path, spec: str | dict, write_suite) -> Path:
    if isinstance(spec, str):
        path = tmp_path / "bad.yaml"
        path.write_text(spec)
        return path
    return write_suite(suite_dict(**spec), "bad.yaml")


@pytest.mark.parametrize("spec,fragments", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_gives_one_clear_line(tmp_path: Path, write_suite, spec, fragments: list[str]) -> None:
    path = _materialise(tmp_path, spec, write_suite)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_suite(tmp_path / "nope.yaml")


@pytest.mark.parametrize("spec,fragments", BAD, ids=[str(i) for i in range(len(BAD))])
def test_cli_config_errors_exit_2_without_traceback_or_output(tmp_path: Path, write_suite, spec, fragments) -> None:
    """In process (click's runner): each command's parse and checks; the real process's stderr below."""
    path = _materialise(tmp_path, spec, write_suite)
    for command in (["validate", str(path)], ["run", str(path), "--runs-dir", str(tmp_path / "runs")]):
        proc = cli_here(*command, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr and fragments[0] in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_a_bad_config_in_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path, write_suite) -> None:
    path = _materialise(tmp_path, BAD[0][0], write_suite)
    for command in (["validate", str(path)], ["run", str(path), "--runs-dir", str(tmp_path / "runs")]):
        proc = cli(*command, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr and BAD[0][1][0] in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_filter_outside_grid_is_a_config_error(tmp_path: Path, write_suite) -> None:
    path = write_suite(suite_dict())
    proc = cli_here("run", str(path), "--models", "bert", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "--models: 'bert' is not in this suite's grid; allowed: mlp" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_required_key_is_reported_as_itself(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nframworks: [pytorch]\nmodels: [mlp]\nbatch_sizes: [8]\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert str(info.value) == (
        f"{path}: framworks: unknown key; did you mean 'frameworks'? allowed: {', '.join(Suite.model_fields)}"
    )  # not "frameworks: required key is missing", which the misspelling causes


def test_several_errors_are_listed_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nframworks: [pytorch]\nmodels: [mlp]\nbatch_sizes: [8]\nepochs: 0\nseed: -1\n")
    proc = cli_here("validate", str(path), cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 3, proc.stderr
    assert all(line.startswith(f"error: {path}: ") for line in lines)
    assert "framworks: unknown key" in lines[0]  # unknown keys first: a misspelling often explains the rest
    assert any("epochs: " in line and "greater than 0" in line for line in lines[1:])
    assert any("seed: " in line for line in lines[1:])


@pytest.mark.parametrize(
    "text,gpus,visible",
    [("cpu", (), "cpu"), ("cuda:0", (0,), "cuda:0"), ("cuda:3", (3,), "cuda:0"), ("cuda:2,5", (2, 5), "cuda:0,1")],
)
def test_a_device_is_parsed_once_for_everyone(text: str, gpus: tuple, visible: str) -> None:
    from workers.common.devices import Device

    d = Device.parse(text)
    assert str(d) == text and d.gpus == gpus and str(d.visible()) == visible and d.count == max(1, len(gpus))


@pytest.mark.parametrize(
    "text,message",
    [("gpu0", "cpu, cuda:N"), ("cuda:", "cpu, cuda:N"), ("cuda:a", "cpu, cuda:N"), ("CPU", "cpu, cuda:N"),
     ("cuda:0,,1", "cpu, cuda:N"), ("cuda:0,0", "names a GPU twice")],
)  # fmt: skip
def test_a_device_outside_the_grammar_is_refused(text: str, message: str) -> None:
    from workers.common.devices import Device

    with pytest.raises(ValueError, match=message):
        Device.parse(text)


@pytest.mark.parametrize(("repeats", "max_repeats"), [(1, 4), (5, 3)], ids=["no spread to judge", "max under repeats"])
def test_adaptive_repeats_need_a_spread_and_room(repeats: int, max_repeats: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_suite(suite_dict(repeats=repeats, max_repeats=max_repeats), "s.yaml")
    assert str(info.value) == (
        f"s.yaml: (top level): max_repeats: {max_repeats} with repeats {repeats}: adaptive repeats need repeats of at least 2 "
        "(a spread to judge) and max_repeats of at least repeats"
    )
    with pytest.raises(ConfigError, match="repeat_target: Input should be less than 1"):
        parse_suite(suite_dict(repeats=2, max_repeats=4, repeat_target=1.5), "s.yaml")
