"""`mlbench verify`: prove, rather than assume, that the frameworks run the same model.

For each model, every framework's worker (a fresh process a framework, checking the models in
turn) builds the model from the same canonical initial weights and reports: its parameter count
and every tensor's shape; whether the weights survive an import/export round trip unchanged; the
output of every parametrised module and the logits on one batch (inference mode, fp32); and the
losses of a few plain-SGD steps on the same batches (dropout off). Each framework is compared with
the first one that ran.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlbench.cells import Cell, Unit
from mlbench.executors.base import Settings, run_here
from mlbench.process.runner import STATUS_OF_ERROR, CancelToken
from mlbench.results import store
from mlbench.runfolder import RunFolder
from workers.common import specs
from workers.common.cellspec import CellSpec
from workers.common.devices import Device

# Each bound sits above the fp32 floor it was measured at and below the smallest difference found so
# far; the floors and the differences: docs/measurement.md ("Proven, not assumed") and docs/data-parallel.md.
LOGITS_RTOL = 1e-4  # max |a - b| over max |b|, fp32
LOSS_RTOL = 1e-3  # per SGD step, |a - b| / |b|
# the model's own optimizer and rate: rounding grows faster through momentum in deep BatchNorm nets
RECIPE_LOSS_RTOL = {"sgd": 5e-3, "adamw": 5e-5}
MODULE_RTOL = 1e-4  # a module output further off than this names the first diverging module
UPDATE_RTOL = 1e-2  # first SGD update per tensor: fp32 against fp64 differs up to 6e-3 where sums cancel
# the second update with optimizer state under a changed rate: ~3x above the floor (0.028), ~3x below
# Keras' own momentum SGD (0.23-0.31, tests/keras_sgd_worker.py)
RECIPE_UPDATE_RTOL = 8e-2
UPDATE_FLOOR = 1e-2  # ... where the reference norm is at least this fraction of the model's largest tensor update
BATCH, STEPS, SGD_LR = 16, 3, 0.001
# data parallel against one device: the same mathematics, the sums in another order
DATA_PARALLEL_LOSS_RTOL = LOSS_RTOL
DATA_PARALLEL_RECIPE_RTOL = {"sgd": 1e-2, "adamw": 5e-5}
REPLICA_TOL = 1e-6  # replicas take identical updates: their parameters stay equal (exactly, where it is one all-reduce)


@dataclass
class Check:
    """One framework's verdict for one model, against the reference framework."""

    model: str
    framework: str
    reference: str
    status: str  # ok | mismatch | error
    num_parameters: int | None = None
    structure: str = ""  # "ok" or the first tensor whose shape differs
    roundtrip_max_abs: float | None = None
    first_diverging_module: str | None = None
    logits_rel_err: float | None = None
    update_rel_err: float | None = None
    update_worst: str | None = None
    loss_rel_diff: float | None = None
    recipe_loss_rel_diff: float | None = None  # the same steps with the model's own optimizer
    recipe_update_rel_err: float | None = None  # ... its second update (state and a new rate), as update_rel_err
    recipe_update_worst: str | None = None
    problems: list[str] = field(default_factory=list)
    device: str = "cpu"  # a data-parallel check's devices (its reference: the same framework on one device)
    replica_divergence: float | None = None  # largest difference between two replicas' parameters after the steps


def verify_overrides(model: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The cell's model overrides plus what makes the comparison deterministic: no dropout, plain SGD."""
    out = dict(overrides or {})
    if "dropout" in specs.override_keys(model):
        out["dropout"] = 0.0
    out["optimizer"] = {"name": "sgd", "lr": SGD_LR, "momentum": 0.0, "weight_decay": 0.0}
    return out


def recipe_optimizer(model: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The optimizer the cells train with (the spec's, with the config's overrides), as a dict, under a
    learning rate that changes at every update: a linear warm-up over all the check's steps (lr/3,
    2lr/3, lr). A constant rate hides any optimizer that folds the rate into its state: Keras' SGD keeps
    lr inside the momentum (v = mu v - lr g) where PyTorch keeps it outside (w -= lr v), the same
    arithmetic only while lr stays put; the ResNets' own schedule (10% warm-up) changes it only at the
    third of three updates, after the last loss the check reads, and verify passed that difference."""
    return {**asdict(specs.get_spec(model, overrides).optimizer), "schedule": "linear", "warmup": 1.0}


def verify_cell(
    framework: str,
    models: list[str],
    module: str,
    overrides: dict[str, dict[str, Any]] | None,
    seed: int,
    device: str = "cpu",
) -> Cell:
    """The verify task of one framework for `models`, in one process (the first model is the cell's);
    on several devices (`cpu:0,1`) the same steps data parallel, to compare with the one-device run."""
    overrides = overrides or {}
    return Cell(
        CellSpec(
            task="verify",
            framework=framework,
            worker=module,
            model=models[0],
            model_overrides=verify_overrides(models[0], overrides.get(models[0])),
            device=device,
            batchnorm="sync" if Device.parse(device).data_parallel else None,
            precision="fp32",
            batch_size=BATCH,
            epochs=1,
            seed=seed,
            warmup_steps=0,
            compile=False,
            threads=None,
            dataset={"name": "synthetic", "train_samples": BATCH * STEPS, "val_samples": BATCH, "path": None},
            inference={"warmup": 0, "runs": 1, "min_runs": 1, "max_s": 1.0},
            verify={
                "batch": BATCH,
                "steps": STEPS,
                "models": [
                    {
                        "model": m,
                        "model_overrides": verify_overrides(m, overrides.get(m)),
                        "recipe_optimizer": recipe_optimizer(m, overrides.get(m)),
                    }
                    for m in models
                ],
            },
        )
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:
            return math.inf
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale


def compare(
    model: str,
    framework: str,
    reference: str,
    got: dict[str, Any],
    ref: dict[str, Any],
    arrays: dict[str, np.ndarray],
    ref_arrays: dict[str, np.ndarray],
    modules: list[str],
) -> Check:
    """Compare one framework's verify report (and arrays) with the reference's."""
    check = Check(model, framework, reference, "ok", num_parameters=got["num_parameters"])
    if got["num_parameters"] != got["expected_parameters"]:
        check.problems.append(f"{got['num_parameters']:,} parameters, the spec has {got['expected_parameters']:,}")
    if got["num_parameters"] != ref["num_parameters"]:
        check.problems.append(f"{got['num_parameters']:,} parameters, {reference} has {ref['num_parameters']:,}")
    shapes, ref_shapes = got["shapes"], ref["shapes"]
    bad = [n for n in ref_shapes if shapes.get(n) != ref_shapes[n]] + [n for n in shapes if n not in ref_shapes]
    check.structure = "ok" if not bad else bad[0]
    if bad:
        check.problems.append(f"layer {bad[0]}: shape {shapes.get(bad[0])} vs {reference} {ref_shapes.get(bad[0])}")
    check.roundtrip_max_abs = got["roundtrip_max_abs"]
    if got["roundtrip_max_abs"] != 0.0:
        check.problems.append(
            f"weights change on import/export (worst: {got['roundtrip_worst']}, {got['roundtrip_max_abs']:.3g})"
        )
    _compare_forward(check, arrays, ref_arrays, modules)
    _compare_update(check, model, got, ref)
    _compare_losses(check, model, got, ref)
    if check.problems:
        check.status = "mismatch"
    return check


def _compare_forward(
    check: Check, arrays: dict[str, np.ndarray], ref_arrays: dict[str, np.ndarray], modules: list[str]
) -> None:
    """The first module whose output differs, and the logits."""
    reference = check.reference
    for name in modules:
        a, b = arrays.get(f"act:{name}"), ref_arrays.get(f"act:{name}")
        if a is None or b is None:
            continue
        if _rel(a, b) > MODULE_RTOL:
            check.first_diverging_module = name
            check.problems.append(f"layer {name}: output differs from {reference} (relative error {_rel(a, b):.2g})")
            break
    check.logits_rel_err = _rel(arrays["logits"], ref_arrays["logits"])
    if not check.logits_rel_err <= LOGITS_RTOL:
        check.problems.append(f"logits differ: relative error {check.logits_rel_err:.2g} > {LOGITS_RTOL:g}")


def _compare_update(check: Check, model: str, got: dict[str, Any], ref: dict[str, Any]) -> None:
    """The first plain-SGD update and the model's own optimizer's second one, tensor by tensor."""
    check.update_rel_err, check.update_worst = _worst_update(got, ref, "update_fingerprint")
    if check.update_rel_err > UPDATE_RTOL:
        check.problems.append(
            f"layer {check.update_worst}: first SGD update differs from {check.reference} "
            f"(relative {check.update_rel_err:.2g})"
        )
    if not ref.get("recipe_update_fingerprint"):
        return
    # Adam turns a gradient that is zero in exact arithmetic (attention key biases) into a full step of
    # rounding noise: with it, only tensors the plain-SGD update moves are compared
    moved = None
    if specs.get_spec(model).optimizer.name == "adamw":
        sgd = ref.get("update_fingerprint", {})
        top = max((v[0] for v in sgd.values()), default=0.0)
        moved = {k for k, v in sgd.items() if v[0] > UPDATE_FLOOR * top}
    err, worst = _worst_update(got, ref, "recipe_update_fingerprint", moved)
    check.recipe_update_rel_err, check.recipe_update_worst = err, worst
    if err > RECIPE_UPDATE_RTOL:
        check.problems.append(
            f"layer {worst}: second update with the model's own optimizer (a changed learning rate) differs "
            f"from {check.reference} (relative {err:.2g})"
        )


def _worst_update(
    got: dict[str, Any], ref: dict[str, Any], key: str, only: set[str] | None = None
) -> tuple[float, str | None]:
    """The largest relative difference of one update between two reports, and its tensor."""
    worst, worst_name = 0.0, None
    ref_fp = {k: v for k, v in ref.get(key, {}).items() if only is None or k in only}
    # a tensor whose update is tiny next to the largest one (e.g. attention key biases, whose gradient is
    # zero in exact arithmetic: softmax ignores a constant shift) is compared on that floor, not its own norm
    floor = UPDATE_FLOOR * max((v[0] for v in ref_fp.values()), default=1.0)
    for name, (norm_b, proj_b) in ref_fp.items():
        norm_a, proj_a = got.get(key, {}).get(name, (math.inf, math.inf))
        scale = max(norm_b, floor) or 1.0
        err = max(abs(norm_a - norm_b), abs(proj_a - proj_b)) / scale
        if err > worst:
            worst, worst_name = err, name
    return worst, worst_name


def _compare_losses(check: Check, model: str, got: dict[str, Any], ref: dict[str, Any]) -> None:
    """A few steps' losses with plain SGD, then with the model's own optimizer and schedule."""
    la, lb = np.asarray(got["losses"], float), np.asarray(ref["losses"], float)
    check.loss_rel_diff = float(np.max(np.abs(la - lb) / np.abs(lb))) if la.shape == lb.shape and la.size else math.inf
    if not check.loss_rel_diff <= LOSS_RTOL:
        check.problems.append(f"SGD losses differ: relative {check.loss_rel_diff:.2g} > {LOSS_RTOL:g}")
    ra, rb = np.asarray(got.get("recipe_losses", []), float), np.asarray(ref.get("recipe_losses", []), float)
    if ra.size or rb.size:
        check.recipe_loss_rel_diff = (
            float(np.max(np.abs(ra - rb) / np.abs(rb))) if ra.shape == rb.shape and ra.size else math.inf
        )
        tol = RECIPE_LOSS_RTOL.get(specs.get_spec(model).optimizer.name, LOSS_RTOL)
        if not check.recipe_loss_rel_diff <= tol:
            check.problems.append(
                f"losses with the model's own optimizer differ: relative {check.recipe_loss_rel_diff:.2g} > {tol:g}"
            )


def _max_rel(a: list[float], b: list[float]) -> float:
    la, lb = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(la - lb) / np.abs(lb))) if la.shape == lb.shape and la.size else math.inf


def compare_data_parallel(model: str, framework: str, device: str, got: dict[str, Any], ref: dict[str, Any]) -> Check:
    """One framework's data-parallel verify run against its own one-device run: the same losses step by
    step (plain SGD, then the model's own optimizer) and replicas still equal after the steps. A
    data-parallel step that does not all-reduce its gradients (a DDP forward that bypasses the wrapper)
    leaves each replica on its own slice's gradient: the replicas drift apart and the losses differ."""
    check = Check(
        model, framework, f"{framework} on cpu", "ok", num_parameters=got.get("num_parameters"), device=device
    )
    check.loss_rel_diff = _max_rel(got["losses"], ref["losses"])
    if not check.loss_rel_diff <= DATA_PARALLEL_LOSS_RTOL:
        check.problems.append(
            f"SGD losses on {device} differ from one device: relative {check.loss_rel_diff:.2g} > {DATA_PARALLEL_LOSS_RTOL:g}"
        )
    if got.get("recipe_losses") or ref.get("recipe_losses"):
        check.recipe_loss_rel_diff = _max_rel(got.get("recipe_losses", []), ref.get("recipe_losses", []))
        tol = DATA_PARALLEL_RECIPE_RTOL.get(specs.get_spec(model).optimizer.name, DATA_PARALLEL_LOSS_RTOL)
        if not check.recipe_loss_rel_diff <= tol:
            check.problems.append(
                f"losses with the model's own optimizer on {device} differ from one device: relative "
                f"{check.recipe_loss_rel_diff:.2g} > {tol:g}"
            )
    divergence = got.get("replica_divergence")
    check.replica_divergence = divergence
    if divergence is None or not divergence <= REPLICA_TOL:
        check.problems.append(
            f"replicas' parameters differ after {len(got['losses'])} steps: {divergence} > {REPLICA_TOL:g}"
            if divergence is not None
            else f"the {device} run did not report its replicas' parameters"
        )
    if check.problems:
        check.status = "mismatch"
    return check


def _load_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def run(
    models: list[str],
    frameworks: list[str],
    run_dir: Path,
    settings: Settings,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    data_parallel: str | None = None,
    on_start: Callable[[Unit, int], None] | None = None,
) -> list[Check]:
    """Run the verify task of every framework for every model, on this host through the executors' one
    launch path (the run's threads and limits); one Check per framework and model, and with
    `data_parallel` (a device such as cpu:0,1) one more each: the same steps on those devices against
    the framework's one-device run. `on_start`: told each worker's pid (the run's journal)."""
    out_dir = RunFolder(run_dir).verify_runs
    out_dir.mkdir(parents=True, exist_ok=True)
    # its arrays are compared here, so it runs on this host; its worker may stay silent for a while
    settings = replace(settings, idle_timeout_s=max(settings.idle_timeout_s, settings.timeout_s))

    def launch(framework: str, device: str) -> dict[str, tuple[dict[str, Any] | None, str]]:
        """One process verifies every model: model -> (its verify event, or None and the problem)."""
        cell = verify_cell(framework, models, settings.modules[framework], overrides, seed, device=device)
        unit = Unit(cell)
        outcome = run_here(
            unit,
            out_dir,
            # a process's limit was one model's: it checks them all
            replace(settings, timeout_s=settings.timeout_s * len(models)),
            executor="local",
            on_start=lambda pid: on_start(unit, pid) if on_start else None,
            on_event=lambda e: None,
            cancel=CancelToken(),
            extra={"verify_dir": str(out_dir.resolve())},
        )
        found: dict[str, tuple[dict[str, Any] | None, str]] = {}
        for e in outcome.events:
            if e["event"] == "verify":
                found[e["model"]] = (e, "")
            elif e["event"] == "verify_error":
                found[e["model"]] = (None, f"{STATUS_OF_ERROR[e['kind']]}: {e['message'].splitlines()[0][:500]}")
        lost = f"{outcome.status}: {outcome.reason}" if outcome.status != "ok" else "its worker did not check it"
        return {m: found.get(m, (None, lost)) for m in models}

    one = {fw: launch(fw, "cpu") for fw in frameworks}
    several = {fw: launch(fw, data_parallel) for fw in frameworks} if data_parallel else {}
    checks: list[Check] = []
    for model in models:
        spec = specs.get_spec(model, verify_overrides(model, (overrides or {}).get(model)))
        probe = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in specs.canonical_params(spec)))
        reference: tuple[str, dict[str, Any], dict[str, np.ndarray]] | None = None
        for fw in frameworks:
            event, problem = one[fw][model]
            if event is None:
                ref = reference[0] if reference else ""
                checks.append(Check(model, fw, ref, "error", problems=[problem]))
                continue
            arrays = _load_arrays(event["arrays"])
            if reference is None:
                reference = (fw, event, arrays)
            checks.append(compare(model, fw, reference[0], event, reference[1], arrays, reference[2], probe))
            if data_parallel:
                dp_event, dp_problem = several[fw][model]
                checks.append(_data_parallel_check(model, fw, data_parallel, dp_event, dp_problem, event))
    save(run_dir, checks)
    return checks


def _data_parallel_check(
    model: str, framework: str, device: str, event: dict[str, Any] | None, problem: str, one_device: dict[str, Any]
) -> Check:
    if event is None:
        return Check(model, framework, f"{framework} on cpu", "error", problems=[f"{device}: {problem}"], device=device)
    return compare_data_parallel(model, framework, device, event, one_device)


def save(run_dir: Path, checks: list[Check]) -> None:
    store.atomic_write(
        RunFolder(run_dir).verify,
        lambda p: p.write_text(json.dumps([asdict(c) for c in checks], indent=1), encoding="utf-8"),
    )


def verdicts(checks: list[Check]) -> dict[str, tuple[bool, str]]:
    """Per model: (passed, one-line detail)."""
    out: dict[str, tuple[bool, str]] = {}
    for model in dict.fromkeys(c.model for c in checks):
        mine = [c for c in checks if c.model == model]
        bad = [
            f"{c.framework}{'' if c.device == 'cpu' else ' on ' + c.device}: {c.problems[0]}"
            for c in mine
            if c.status != "ok"
        ]
        one = [c for c in mine if c.device == "cpu"]
        several = len(mine) - len(one)
        agree = f"{len(one)} frameworks agree" + (f"; {several} data-parallel runs equal one device" if several else "")
        out[model] = (not bad, "; ".join(bad) if bad else agree)
    return out


def load(run_dir: Path) -> list[Check]:
    path = RunFolder(run_dir).verify
    if not path.is_file():
        return []
    return [Check(**c) for c in json.loads(path.read_text(encoding="utf-8"))]


TABLE_COLUMNS = (
    "model",
    "framework",
    "devices",
    "vs",
    "params",
    "structure",
    "round trip",
    "first diverging layer",
    "logits rel err",
    "1st update rel err",
    "SGD loss rel diff",
    "own-optimizer loss rel diff",
    "verdict",
)


def _e(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(checks: list[Check]) -> Any:
    """The checks as the terminal shows them (a rich Table)."""
    from rich.table import Table

    out = Table(title="mlbench verify (fp32, CPU, same initial weights and global batches)")
    for col in TABLE_COLUMNS:
        out.add_column(col)
    for c in checks:
        verdict = "ok" if not c.replica_divergence else f"ok (replicas differ by {c.replica_divergence:.1g})"
        out.add_row(
            c.model,
            c.framework,
            c.device,
            c.reference or "-",
            f"{c.num_parameters:,}" if c.num_parameters else "-",
            c.structure or "-",
            _e(c.roundtrip_max_abs, ".1g"),
            c.first_diverging_module or "-",
            _e(c.logits_rel_err, ".1e"),
            _e(c.update_rel_err, ".1e"),
            _e(c.loss_rel_diff, ".1e"),
            _e(c.recipe_loss_rel_diff, ".1e"),
            verdict if c.status == "ok" else f"{c.status}: {c.problems[0]}",
        )
    return out
