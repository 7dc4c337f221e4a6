"""The data path's derived figures (rebuilt with the results): whether each cell kept its device fed
(AU against the suite's threshold) and what its loader costs against its `memory` twin (the data
tax), like scaling efficiency against the one-device cell.

A file-fed cell's twin is the `memory` cell of the same framework, model, device, precision, batch,
seed, order and augmentation on the same host: the same steps on the same batches, fed from host
memory gathered before each epoch. The tax is the throughput lost, 1 - cell / twin; its bounds come
from the two throughputs' 95% intervals (conservative, not a joint interval).
"""

from __future__ import annotations

from typing import Any

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


def annotate(rows: list[Row], au_threshold: float) -> None:
    """Fill au_pass, data_tax (its bounds, or the reason it is missing) for every row (in place)."""
    for r in rows:
        au = r.get("accelerator_utilisation")
        r["au_pass"] = au >= au_threshold if au is not None else None
        r["data_tax"] = r["data_tax_low"] = r["data_tax_high"] = r["data_tax_reason"] = None
        if r.get("data_format") in (None, "memory"):
            continue
        b = twin(r, rows)
        if r["status"] != "ok" or not r.get("samples_per_second"):
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
            r["data_tax_low"] = _tax(r.get("samples_per_second_ci_high"), b.get("samples_per_second_ci_low"))
            r["data_tax_high"] = _tax(r.get("samples_per_second_ci_low"), b.get("samples_per_second_ci_high"))
