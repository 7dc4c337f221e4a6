"""The data path's derived figures (rebuilt with the results): whether each cell kept its device fed
(AU against the suite's threshold, a pass or a fail only beyond what a rerun moves AU) and what its loader costs against its `memory` twin (the data
tax), like scaling efficiency against the one-device cell.

A file-fed cell's twin is the `memory` cell of the same framework, model, device, precision, batch,
seed, order and augmentation on the same host: the same steps on the same batches, fed from host
memory gathered before each epoch. The tax is the throughput lost, 1 - cell / twin; its bounds come
from the two throughputs' 95% intervals (conservative, not a joint interval).
"""

from __future__ import annotations

from typing import Any

from mlbench.analysis import evidence

Row = dict[str, Any]
MATCH = (
    "framework",
    "model_name",
    "device",
    "precision",
    "batch_size",
    "seed",
    "deterministic",
    "compile",
    "dataset",
    "train_samples",
    "epochs",
    "hostname",
    "data_order",
    "data_augment",
)


def twin(r: Row, rows: list[Row]) -> Row | None:
    """The memory cell `r` (a file-fed cell) is measured against, whatever its status, if the run holds it."""
    for b in rows:
        if (
            b.get("data_format") == "memory"
            and all(b.get(k) == r.get(k) for k in MATCH)
            and (r.get("data_order") != "two_level" or b.get("data_shards") == r.get("data_shards"))
        ):
            return b
    return None


def _tax(a: float | None, b: float | None) -> float | None:
    return 1.0 - a / b if a is not None and b else None


# what fixes a cell's batches: cells that agree on these must have trained on the same bytes
SAME_BATCHES = ("model_name", "dataset", "train_samples", "batch_size", "seed", "data_order", "data_augment")


def _data_name(r: Row) -> str:
    fmt = r.get("data_format")
    where = f" {r['data_storage']}" if r.get("data_storage") in ("stream", "cache") else ""
    return f"{r['framework']} {fmt}" + (f"/{r['loader']} w{r['loader_workers']}{where}" if fmt != "memory" else "")


def check_digests(rows: list[Row]) -> None:
    """Cells that read the same batches (SAME_BATCHES, and the shards of a two_level order) must
    report the same digests for them: digests_agree per row, and where not, the first batch that
    differs and the cell it differs from (the group's first memory cell, else its first cell)."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        if not r.get("batch_digests"):
            r["digests_agree"] = r["digest_mismatch"] = None
            continue
        key = tuple(r.get(k) for k in SAME_BATCHES)
        key += (r.get("data_shards") if r.get("data_order") == "two_level" else None,)
        # a lossy codec's files decode to other pixels than the arrays they were made from: such cells are
        # checked against each other (the first Pillow decode is the reference), not against memory
        resized = bool(r.get("image_codec")) and bool(r.get("image_size"))
        key += ((r.get("image_codec"), r.get("image_size")) if r.get("image_codec") == "jpeg" or resized else None,)
        groups.setdefault(key, []).append(r)
    for members in groups.values():
        ref = next(
            (m for m in members if m.get("data_format") == "memory"),
            next((m for m in members if m.get("image_decoder") == "pillow"), members[0]),
        )
        for r in members:
            if len(members) < 2:
                r["digests_agree"] = r["digest_mismatch"] = None
                continue
            n = min(len(r["batch_digests"]), len(ref["batch_digests"]))
            first = next((i for i in range(n) if r["batch_digests"][i] != ref["batch_digests"][i]), None)
            r["digests_agree"] = first is None
            r["digest_mismatch"] = (
                None if first is None else f"batch {first} differs from {_data_name(ref)} ({ref['cell_id']})"
            )


def annotate(rows: list[Row], au_threshold: float) -> None:
    """Fill AU where the twin gives it, au_pass, the data tax (its bounds and whether it is told apart
    from the noise, or the reason it is missing) and the digest check for every row (in place)."""
    check_digests(rows)
    for r in rows:
        if r.get("waits_overlap_steps") and r.get("data_format") not in (None, "memory"):
            b = twin(r, rows)
            mine, base = r.get("step_time_median_s"), (b or {}).get("step_time_median_s")
            au = min(1.0, base / mine) if r["status"] == "ok" and b and b["status"] == "ok" and mine and base else None
            r["accelerator_utilisation"] = au
            r["data_wait_share"] = 1.0 - au if au is not None else None
            r["au_source"] = "memory twin" if au is not None else None
            # the twin's step over this cell's is their throughputs' ratio: between runs, its interval is AU's
            runs = au is not None and b and r.get("ci_kind") == b.get("ci_kind") == "runs"
            low, high = evidence.throughput_ratio_bounds(r, b) if runs else (None, None)
            r["accelerator_utilisation_ci_low"] = min(1.0, low) if low is not None else None
            r["accelerator_utilisation_ci_high"] = min(1.0, high) if high is not None else None
        elif r.get("accelerator_utilisation") is not None:
            r["au_source"] = "waits"
        data_tax(r, rows)
        decode_cost(r, rows)
        r["au_pass"], r["au_pass_reason"] = au_verdict(r, au_threshold)


def au_verdict(r: Row, threshold: float) -> tuple[bool | None, str | None]:
    """AU against the threshold, told as every figure is (mlbench/analysis/evidence.py): a pass or a fail only
    where what a rerun gives lies wholly on one side, the runs' interval (or, from the memory twin, the
    throughput ratio's), or one run's AU beyond the single-run floor; else (None, why)."""
    au = r.get("accelerator_utilisation")
    if au is None:
        return None, None
    untrusted = evidence.why_untrusted(r)
    if untrusted:
        return None, f"cannot tell: {untrusted} during its steps"
    low, high = r.get("accelerator_utilisation_ci_low"), r.get("accelerator_utilisation_ci_high")
    if low is not None and high is not None:  # between runs
        if low >= threshold or high < threshold:
            return low >= threshold, None
        return (
            None,
            f"cannot tell: AU's 95% interval {100 * low:.0f}-{100 * high:.0f}% holds the {threshold:.0%} threshold",
        )
    if r.get("au_source") == "memory twin":  # one run of each: AU moves as their throughputs' ratio does
        move = 1.0 + evidence.SINGLE_RUN_FLOOR["throughput"]
        low, high, what = au / move, min(1.0, au * move), f"the {move - 1:.0%} a rerun moves throughput"
    else:
        floor = evidence.AU_SINGLE_RUN_FLOOR
        low, high, what = au - floor, min(1.0, au + floor), f"the {100 * floor:.0f} points a rerun moves AU"
    if low >= threshold or high < threshold:
        return low >= threshold, None
    return None, (
        f"cannot tell from one run: AU {100 * au:.0f}% lies within {what} of the {threshold:.0%} threshold "
        "(repeats: 3 gives an interval)"
    )


IMAGE_MATCH = (*MATCH, "loader", "loader_workers", "data_shards", "data_storage", "emulated_compute_s")


def decode_cost(r: Row, rows: list[Row]) -> None:
    """An image folder's cost against the raw cell of the same loader, workers and shards (the same pixels as
    records, nothing to open or decode): 1 - its loader-alone samples/s over the raw cell's; None without one."""
    r["image_decode_cost"] = None
    if r.get("data_format") != "imagefolder" or not r.get("loader_samples_per_second"):
        return
    raw = next(
        (b for b in rows if b.get("data_format") == "raw" and all(b.get(k) == r.get(k) for k in IMAGE_MATCH)),
        None,
    )
    if raw is not None and raw.get("loader_samples_per_second"):
        r["image_decode_cost"] = _tax(r["loader_samples_per_second"], raw["loader_samples_per_second"])


def data_tax(r: Row, rows: list[Row]) -> None:
    """Fill r's data tax, its bounds and whether it is told apart from the noise, or why it is missing."""
    r["data_tax"] = r["data_tax_low"] = r["data_tax_high"] = r["data_tax_reason"] = r["data_tax_clear"] = None
    if r.get("data_format") in (None, "memory"):
        return
    b = twin(r, rows)
    if r.get("emulated_compute_s") is not None:
        r["data_tax_reason"] = "emulated compute: its steps sleep, so AU, not throughput, is its figure"
    elif r["status"] != "ok" or not r.get("samples_per_second"):
        r["data_tax_reason"] = f"this cell is {r['status']}: no throughput"
    elif b is None:
        r["data_tax_reason"] = (
            "no memory cell of the same framework, model, device, precision, batch, order and augmentation "
            "in this run (add memory to dataset.format)"
        )
    elif b["status"] != "ok" or not b.get("samples_per_second"):
        r["data_tax_reason"] = f"its memory twin {b['cell_id']} is {b['status']}: no throughput"
    else:
        r["data_tax"] = _tax(r["samples_per_second"], b["samples_per_second"])
        low, high = evidence.throughput_ratio_bounds(r, b)  # of the cell's throughput over its twin's
        r["data_tax_low"], r["data_tax_high"] = _tax(high, 1.0), _tax(low, 1.0)
        # told as every throughput comparison is (mlbench/analysis/evidence.py): single runs need a gap
        # beyond what a rerun moves, which their own intervals do not cover
        told = evidence.tell_throughput(r, b)
        r["data_tax_clear"] = told.clear
        if not told.clear:
            r["data_tax_reason"] = f"cannot tell the loader's cost from the runs' noise: {told.why}"
