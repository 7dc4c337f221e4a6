"""Command line: `python -m mlbench run|validate|list|env|report|schema`. Thin: parse, then call."""

from __future__ import annotations

import difflib
import json
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from mlbench import executors
from mlbench.cells import axes, expand
from mlbench.config import (
    BUILTIN_WORKERS,
    DATA_PARALLEL_CHECK_DEVICE,
    PRECISIONS,
    ConfigError,
    apply_filters,
    load_suite,
    parse_suite,
)
from mlbench.process import environment, runner
from mlbench.results import store
from mlbench.runfolder import RunFolder
from workers.common import registry, specs
from workers.common.data import DataUnavailable, DownloadError

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """One line per problem, each starting with `error:`; exit with `code`."""
    for line in message.splitlines() or [""]:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


def _split(values: tuple[str, ...], comma: bool = True) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in (v.split(",") if comma else [v]) if x.strip())
    return out


def _only(
    frameworks: tuple[str, ...],
    models: tuple[str, ...],
    devices: tuple[str, ...],
    precisions: tuple[str, ...],
    batch_sizes: tuple[str, ...],
) -> dict[str, list[Any]]:
    try:
        sizes = [int(b) for b in _split(batch_sizes)]
    except ValueError:
        _fail(f"--batch-sizes takes whole numbers, got {', '.join(batch_sizes)!r}")
    return {
        "framework": _split(frameworks),
        "model": _split(models),
        "device": _split(devices, comma=False),
        "precision": _split(precisions),
        "batch_size": sizes,
    }


def _filters(f: Any) -> Any:
    for opt in reversed(
        [
            click.option(
                "--frameworks", multiple=True, help="Only these frameworks (comma- or space-separated, or repeated)."
            ),
            click.option(
                "--models", multiple=True, help="Only these models, or families: cnn (the ResNets), transformer, mlp."
            ),
            click.option(
                "--devices",
                multiple=True,
                help="These devices (space-separated or repeated; cuda:0,1 is one device); one the suite lacks "
                "replaces the suite's devices.",
            ),
            click.option("--precisions", multiple=True, help="Only these precisions."),
            click.option("--batch-sizes", multiple=True, help="Only these batch sizes."),
        ]
    ):
        f = opt(f)
    return f


FILTER_FLAGS = ("--frameworks", "--models", "--devices", "--precisions", "--batch-sizes")
DEFAULT_CONFIG = Path("configs") / "benchmark_config.yaml"  # what `mlbench run` runs when given no suite


def _config_like(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml", ".json")) or "/" in arg or Path(arg).is_file()


def spread_filters(args: list[str]) -> list[str]:
    """The brief's space-separated filter values (`--frameworks pytorch tensorflow`) as repeated flags: a
    filter takes the words after its value up to the next option or a config file's name."""
    out: list[str] = []
    flag, needs_value = None, False
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if needs_value:
            needs_value = False
        elif flag and not arg.startswith("-") and not _config_like(arg):
            out.append(flag)
        else:
            name, eq, _ = arg.partition("=")
            flag = name if name in FILTER_FLAGS else None
            needs_value = flag is not None and not eq
        out.append(arg)
    return out


class FilterCommand(click.Command):
    """A command whose filters also take space-separated values."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_filters(args))


def _config_arg(f: Any) -> Any:
    """The suite file as the CONFIG argument or as --config FILE (the brief's form); neither: the default."""
    f = click.option(
        "--config", "config_opt", type=click.Path(dir_okay=False), help=f"The suite file [default: {DEFAULT_CONFIG}]."
    )(f)
    return click.argument("config", required=False, type=click.Path(dir_okay=False))(f)


def _config_path(config: str | None, config_opt: str | None) -> str:
    if config and config_opt and Path(config) != Path(config_opt):
        _fail(f"two suite files given: {config} and --config {config_opt}; give one")
    chosen = config or config_opt
    if chosen:
        if not Path(chosen).exists():  # the brief's configs/quick_test.yaml is configs/quick.yaml here
            near = difflib.get_close_matches(Path(chosen).name, [p.name for p in Path(chosen).parent.glob("*.y*ml")])
            _fail(
                f"{chosen}: no such config file" + (f"; did you mean {Path(chosen).parent / near[0]}?" if near else "")
            )
        return chosen
    default = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else Path(__file__).resolve().parent.parent / DEFAULT_CONFIG
    click.echo(f"no suite file given: running the default suite, {default}", err=True)
    return str(default)


def _narrow(suite: Any, only: dict[str, list[Any]], config: str) -> tuple[Any, dict[str, list[Any]]]:
    """The command line's filters on the suite: families of models, a device the suite lacks (it runs there)."""
    try:
        suite, only, notes = apply_filters(suite, only, config)
    except ConfigError as exc:
        _fail(str(exc))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return suite, only


def _run_folder(f: Any) -> Any:
    """--name and --runs-dir: where a command that writes a run folder writes it."""
    f = click.option(
        "--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False), help="Where runs go."
    )(f)
    return click.option("--name", help="Run name (folder under runs/), instead of the config's `name`.")(f)


def _sigterm_interrupts() -> None:
    """SIGTERM stops a command as Ctrl-C does: what is in flight is stopped, what finished is kept."""

    def _sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    # Ctrl-C / kill -INT as well when mlbench was started with SIGINT ignored (a shell script's `cmd &`
    # passes SIG_IGN on, and Python then installs no handler): the same stop, not a run that ignores it
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _load(config: str, name: str | None = None) -> Any:
    try:
        suite = load_suite(config)
        if name:  # validated like the file's own `name`
            suite = parse_suite({**suite.model_dump(), "name": name}, f"{config} (with --name)")
        return suite
    except ConfigError as exc:
        _fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlbench")
def main() -> None:
    """Train and measure identical models across PyTorch, TensorFlow and JAX/Flax."""


@main.command(cls=FilterCommand)
@_config_arg
@click.option("--resume", is_flag=True, help="Keep stored cells; run only those without a stored result.")
@click.option("--retry-failed", is_flag=True, help="With --resume, also re-run cells stored as not ok.")
@_run_folder
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where cells run, instead of the config's `executor`: this machine, or a Ray cluster "
    "(RAY_ADDRESS or the config's ray.address; none: a local Ray instance for the run).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Cells at once, instead of the config's `parallel` (local: only cells on disjoint GPUs together).",
)
@click.option(
    "--profile",
    is_flag=True,
    default=None,
    help="Keep each cell's profiler trace in runs/<name>/profiles/ (the config's `profile: true`).",
)
@_filters
def run(
    config: str | None,
    config_opt: str | None,
    resume: bool,
    retry_failed: bool,
    name: str | None,
    runs_dir: str,
    executor: str | None,
    jobs: int | None,
    profile: bool | None,
    frameworks: tuple[str, ...],
    models: tuple[str, ...],
    devices: tuple[str, ...],
    precisions: tuple[str, ...],
    batch_sizes: tuple[str, ...],
) -> None:
    """Run every cell of CONFIG (narrowed by the filters) and write results, report.html and RESULTS.md.
    Filters take several values (comma-separated, space-separated or repeated); --models takes the family
    names cnn, transformer and mlp too; a --devices value the suite lacks runs the suite on that device."""
    from mlbench import orchestrator  # here: `validate` and `list` need no plotting library

    config = _config_path(config, config_opt)
    suite = _load(config, name)
    where = {k: v for k, v in {"executor": executor, "parallel": jobs, "profile": profile}.items() if v}
    if where:  # validated like the file's own keys
        suite = parse_suite({**suite.model_dump(), **where}, f"{config} (with --executor/--jobs/--profile)")
    suite, only = _narrow(suite, _only(frameworks, models, devices, precisions, batch_sizes), config)
    try:
        axes(suite, only)  # a filter outside the grid: said before anything starts
        executors.check(suite.executor)
    except (ConfigError, executors.ExecutorUnavailable) as exc:
        _fail(str(exc))

    _sigterm_interrupts()
    resume_cmd = (
        f"python -m mlbench run {config} --resume"
        + (f" --name {name}" if name else "")
        + (f" --executor {executor}" if executor else "")
    )
    try:
        summary = orchestrator.run_suite(
            suite, resume=resume, retry_failed=retry_failed, only=only, runs_root=Path(runs_dir)
        )
    except (runner.Interrupted, KeyboardInterrupt):
        click.echo(
            f"\ninterrupted: the cells in flight were stopped and not stored; finished cells are kept.\n"
            f"resume with: {resume_cmd}",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as exc:  # a filter outside the grid: raised before anything is touched
        _fail(str(exc))
    except executors.ClusterLost as exc:
        _fail(f"{exc}; finished cells are kept, resume with: {resume_cmd}", 1)
    except store.RunLocked as exc:
        _fail(str(exc), 1)
    except store.StoreError as exc:
        _fail(f"{exc}; finished cells are kept, resume with: {resume_cmd}", 1)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())) or "nothing to run"
    kept = f" ({summary.already_stored} already stored)" if summary.already_stored else ""
    folder = RunFolder(summary.run_dir)
    click.echo(f"{counts}{kept}. results: {folder.results}  report: {folder.report}  {folder.results_md}")


@main.command(cls=FilterCommand)
@_config_arg
@_run_folder
@click.option(
    "--memory-limit-mb",
    type=click.FloatRange(min=1),
    default=None,
    help="Every probe under this memory limit, instead of the config's `memory_limit_mb`.",
)
@_filters
def maxbatch(
    config: str | None,
    config_opt: str | None,
    name: str | None,
    runs_dir: str,
    memory_limit_mb: float | None,
    frameworks: tuple[str, ...],
    models: tuple[str, ...],
    devices: tuple[str, ...],
    precisions: tuple[str, ...],
    batch_sizes: tuple[str, ...],
) -> None:
    """The largest training batch that fits, per framework, model, device and precision of CONFIG:
    a fresh worker per probe, doubling then bisecting (settings under `maxbatch:`); run it again to
    continue an interrupted search from its stored probes."""
    from rich.console import Console

    from mlbench import orchestrator
    from mlbench.tasks import maxbatch as search

    config = _config_path(config, config_opt)
    suite = _load(config, name)
    if memory_limit_mb is not None:
        suite = parse_suite(
            {**suite.model_dump(), "memory_limit_mb": memory_limit_mb}, f"{config} (with --memory-limit-mb)"
        )
    suite, only = _narrow(suite, _only(frameworks, models, devices, precisions, batch_sizes), config)
    try:
        expand(suite, only)
    except ConfigError as exc:
        _fail(str(exc))

    _sigterm_interrupts()
    run_dir = Path(runs_dir) / suite.name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with store.RunLock(run_dir):
            orchestrator.prepare(suite, run_dir, environment.capture())
            found = search.run(suite, run_dir, only, say=lambda line: click.echo(line, err=True))
            orchestrator.rebuild(run_dir)
    except (runner.Interrupted, KeyboardInterrupt):
        click.echo(
            f"\ninterrupted: the probe in flight was stopped; finished probes are stored.\n"
            f"continue with: python -m mlbench maxbatch {config}" + (f" --name {name}" if name else ""),
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    except store.RunLocked as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"cannot use the run folder {run_dir}: {exc}", 1)
    Console(width=200).print(search.table(found, suite.memory_limit_mb))
    folder = RunFolder(run_dir)
    click.echo(f"searches: {folder.maxbatch}  probes: {folder.maxbatch_probes_table}  report: {folder.report}")
    if any(r["status"] == "failed" for r in found):
        sys.exit(1)


@main.command(cls=FilterCommand)
@_config_arg
@_filters
def validate(
    config: str | None,
    config_opt: str | None,
    frameworks: tuple[str, ...],
    models: tuple[str, ...],
    devices: tuple[str, ...],
    precisions: tuple[str, ...],
    batch_sizes: tuple[str, ...],
) -> None:
    """Check CONFIG (and the filters) without running anything."""
    config = _config_path(config, config_opt)
    suite, only = _narrow(_load(config), _only(frameworks, models, devices, precisions, batch_sizes), config)
    try:
        cells = expand(suite, only)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"{config}: ok, {len(cells)} cells -> runs/{suite.name}/")


@main.command(name="list")
def list_() -> None:
    """Frameworks (and whether installed here), models, precisions."""
    click.echo("frameworks:")
    for fw, module in BUILTIN_WORKERS.items():
        version = environment.installed_version(*registry.get(fw).distributions)
        worker = "worker ready" if not executors.base.worker_missing(module) else "worker missing"
        click.echo(f"  {fw:<11} {module:<26} {'installed ' + version if version else 'not installed'}; {worker}")
    click.echo("models:")
    for name in specs.MODELS:
        spec = specs.get_spec(name)
        click.echo(f"  {name:<9} {specs.num_parameters(spec):>11,} parameters  ({spec.family} data)")
    click.echo(f"precisions: {', '.join(PRECISIONS)}")
    click.echo("devices: cpu, cuda:N, cuda:N,M (data parallel)")


@main.command()
def env() -> None:
    """Print the environment record stored with every cell."""
    click.echo(json.dumps(environment.capture(), indent=1, default=str))


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--results",
    "results_path",
    type=click.Path(exists=True),
    help="A run folder (as RUN_DIR), or a results file (results.parquet or results.json) to report on.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for report.html, RESULTS.md and its charts/ [default: the run folder, or the results file's].",
)
@click.option("--command", "made_by", help="The command that made the run, quoted at the top of RESULTS.md.")
def report(run_dir: str | None, results_path: str | None, output: str | None, made_by: str | None) -> None:
    """Rebuild RUN_DIR's results exports, report.html and RESULTS.md (with its charts as SVG and PNG)
    from its stored cells; or write report.html and RESULTS.md from a results file (--results FILE)."""
    from mlbench import orchestrator

    if run_dir and results_path:
        _fail("give RUN_DIR or --results, not both")
    if not (run_dir or results_path):
        _fail("give a run folder (RUN_DIR, or --results DIR) or a results file (--results FILE)")
    source = Path(run_dir or results_path)  # type: ignore[arg-type]
    written: list[Path] = []
    try:
        if source.is_dir() and RunFolder(source).suite.is_file():  # a run folder: rebuilt from its cells
            written = orchestrator.rebuild(source)
        if output or made_by or not written:  # a results file, or elsewhere, or with the command on top
            written += orchestrator.from_results(source, Path(output) if output else None, made_by)
    except (FileNotFoundError, ConfigError, store.ResultsError, OSError) as exc:
        _fail(str(exc))
    for p in written:
        click.echo(str(p))


@main.command()
@click.argument("run_a", type=click.Path(exists=True))
@click.argument("run_b", type=click.Path(exists=True))
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.01,
    show_default=True,
    help="significance level of the rank test",
)
@click.option(
    "--min-change",
    type=click.FloatRange(0),
    default=0.05,
    show_default=True,
    help="smallest relative change that counts (0.05 = 5%)",
)
@click.option(
    "--min-change-ms",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="smallest change of a latency, in ms, that counts (with --min-change; 0: the relative one alone)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="folder for compare-A-vs-B.html/.txt [default: RUN_B, or the folder of RUN_B's file]",
)
@click.option("--fail-on-regression", is_flag=True, help="exit 1 when any figure regressed")
def compare(
    run_a: str,
    run_b: str,
    alpha: float,
    min_change: float,
    min_change_ms: float,
    out_dir: str | None,
    fail_on_regression: bool,
) -> None:
    """Compare RUN_B against RUN_A cell by cell: each figure's change and whether it is significant.
    Each is a run folder or a results file (results.parquet, or results.json: no raw step times)."""
    from mlbench.analysis import compare as cmp_mod
    from mlbench.present import comparison

    try:
        result = cmp_mod.compare_runs(
            Path(run_a), Path(run_b), alpha=alpha, min_change=min_change, min_change_ms=min_change_ms
        )
        target = Path(out_dir) if out_dir else Path(run_b) if Path(run_b).is_dir() else Path(run_b).parent
        target.mkdir(parents=True, exist_ok=True)
        txt, page = comparison.write(result, target)
    except (store.ResultsError, OSError) as exc:
        _fail(str(exc))
    click.echo(txt.read_text(encoding="utf-8"), nl=False)
    click.echo(f"written: {txt}  {page}")
    if not result.matched:
        click.echo("warning: no cell of B matches a cell of A (same spec, both ok): nothing compared", err=True)
    if fail_on_regression and result.regressions:
        sys.exit(1)


@main.group()
def data() -> None:
    """The suite's data on disk: datasets and the shard files file-fed cells read."""


@data.command(name="prepare")
@_config_arg
@_run_folder
def data_prepare(config: str | None, config_opt: str | None, name: str | None, runs_dir: str) -> None:
    """Write every dataset and shard set CONFIG's cells read into runs/<name>/data/, atomically (a run
    makes what is missing itself; this makes it first)."""
    from mlbench.tasks.prepare import prepare
    from workers.common.datapath.storage import StorageError

    config = _config_path(config, config_opt)
    suite = _load(config, name)
    data_dir = RunFolder(Path(runs_dir) / suite.name).data
    try:
        made = prepare(expand(suite), data_dir)
    except (DownloadError, DataUnavailable, StorageError) as exc:
        _fail(str(exc), 1)
    for p in made:
        what = f"written in {p.seconds:.1f}s" if p.made else "there already"
        click.echo(f"{p.folder}: {p.files} files, {p.bytes / 1e6:.1f} MB, {what}")
    click.echo(f"{len(made)} folders in {data_dir}")


@main.command(name="import-dlio")
@click.argument("workload", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the suite here (default: print it).")
@click.option(
    "--model", help="The mlbench model the real-compute cells train (default: the workload's, where mlbench has it)."
)
@click.option("--name", help="The suite's name (default: dlio-<workload file name>).")
def import_dlio(workload: str, output: str | None, model: str | None, name: str | None) -> None:
    """A DLIO workload file (dataset, reader, train, metric) as an mlbench suite: real and emulated compute
    cells over the workload's format, files and loader; what has no counterpart is named."""
    import yaml

    from mlbench.tasks import dlio

    try:
        suite, notes = dlio.import_workload(Path(workload), model=model, name=name)
    except ConfigError as exc:
        _fail(str(exc))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    text = f"# imported from {workload} by mlbench import-dlio\n" + yaml.safe_dump(suite, sort_keys=False)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"{output}: {len(expand(parse_suite(suite)))} cells")
    else:
        click.echo(text, nl=False)


def _verify_data(config: str | None, runs_dir: str, name: str, models: list[str], frameworks: list[str]) -> None:
    from rich.console import Console

    from mlbench.tasks import verify_data

    if not config:
        _fail("verify --data: give --config, the suite whose data path (dataset, loader) to check")
    suite = _load(config)
    if frameworks:
        suite = _load_data({**suite.model_dump(), "frameworks": frameworks}, config)
    run_dir = Path(runs_dir) / name
    try:
        with store.RunLock(run_dir):
            checks = verify_data.run(suite, run_dir, executors.Settings.of(suite), models or None)
    except store.RunLocked as exc:
        _fail(str(exc), 1)
    except (DownloadError, DataUnavailable) as exc:
        _fail(str(exc), 1)
    Console(width=200).print(verify_data.table(checks))
    failed = [c for c in checks if c.status != "ok"]
    click.echo(f"{len(checks) - len(failed)} of {len(checks)} loader checks gave the reference's batches")
    if failed:
        sys.exit(1)


def _load_data(data: dict[str, Any], source: str) -> Any:
    try:
        return parse_suite(data, source)
    except ConfigError as exc:
        _fail(str(exc))


@main.command()
def schema() -> None:
    """Print the results columns as a Markdown table."""
    from mlbench.results.schema import markdown_table

    click.echo(markdown_table())


@main.command(name="verify", cls=FilterCommand)
@click.option("--models", multiple=True, help="Models to check (default: all).")
@click.option("--frameworks", multiple=True, help="Frameworks to compare (default: all built-in).")
@click.option("--config", type=click.Path(dir_okay=False), help="Take workers and model_overrides from this suite.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--name", default="verify", show_default=True, help="Folder under --runs-dir for logs and verify.json.")
@click.option(
    "--data-parallel/--no-data-parallel",
    default=True,
    show_default=True,
    help=f"Also train each model data parallel on {DATA_PARALLEL_CHECK_DEVICE} and check it against one device.",
)
@click.option(
    "--data",
    "data_path",
    is_flag=True,
    help="Check the data path instead (needs --config): every framework's loaders, at each worker count "
    "and after a restart mid-epoch, deliver the batches of a numpy reference.",
)
def verify_cmd(
    models: tuple[str, ...],
    frameworks: tuple[str, ...],
    config: str | None,
    runs_dir: str,
    name: str,
    data_parallel: bool,
    data_path: bool,
) -> None:
    """Check that every framework builds the same model: structure, weights, outputs, training losses;
    and that each framework's data-parallel training equals its one-device training. With --data:
    that every framework's loaders deliver the same batches."""
    from rich.console import Console

    from mlbench.tasks import verify

    if data_path:
        _verify_data(config, runs_dir, name, _split(models), _split(frameworks))
        return
    suite = _load(config) if config else None
    workers = dict(suite.workers) if suite else {}
    chosen_models = _split(models) or (suite.models if suite else list(specs.MODELS))
    chosen_fws = _split(frameworks) or (suite.frameworks if suite else list(BUILTIN_WORKERS))
    for m in chosen_models:
        if m not in specs.MODELS:
            _fail(f"--models: unknown model {m!r}; allowed: {', '.join(specs.MODELS)}")
    for fw in chosen_fws:
        if fw not in {**BUILTIN_WORKERS, **workers}:
            _fail(f"--frameworks: unknown framework {fw!r}; allowed: {', '.join({**BUILTIN_WORKERS, **workers})}")
    run_dir = Path(runs_dir) / name
    try:
        with store.RunLock(run_dir):
            checks = verify.run(
                chosen_models,
                chosen_fws,
                run_dir,
                executors.Settings.of(suite) if suite else executors.Settings.standalone(name, chosen_fws, workers),
                overrides=dict(suite.model_overrides) if suite else None,
                seed=suite.seed if suite else 0,
                data_parallel=DATA_PARALLEL_CHECK_DEVICE if data_parallel else None,
            )
    except store.RunLocked as exc:
        _fail(str(exc), 1)
    Console(width=200).print(verify.table(checks))
    failed = [c for c in checks if c.status != "ok"]
    click.echo(f"{len(checks) - len(failed)} of {len(checks)} checks passed; details: {RunFolder(run_dir).verify}")
    if failed:
        sys.exit(1)
