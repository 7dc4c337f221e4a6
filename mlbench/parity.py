"""Cross-framework verdicts added to the results when they are rebuilt: verify and accuracy parity."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mlbench.verify import Check, verdicts

GROUP = ("model_name", "device", "precision", "batch_size", "dataset", "epochs", "seed")


def accuracy_groups(rows: list[dict[str, Any]], tolerance_pts: float) -> list[dict[str, Any]]:
    """Per model/device/precision/batch: every framework's final validation accuracy and the verdict."""
    groups: dict[tuple[Any, ...], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["status"] == "ok" and r["final_val_accuracy"] is not None:
            groups[tuple(r[k] for k in GROUP)][r["framework"]] = r["final_val_accuracy"]
    out = []
    for key, accs in groups.items():
        spread = (max(accs.values()) - min(accs.values())) * 100 if len(accs) > 1 else None
        out.append(
            {
                **dict(zip(GROUP, key)),
                "val_accuracy": accs,
                "spread_pts": spread,
                "parity": None if spread is None else spread <= tolerance_pts + 1e-9,
                "tolerance_pts": tolerance_pts,
            }
        )
    return out


def annotate(rows: list[dict[str, Any]], checks: list[Check], tolerance_pts: float) -> list[dict[str, Any]]:
    """Fill the verify and accuracy-parity columns, in place; returns the accuracy groups."""
    groups = accuracy_groups(rows, tolerance_pts)
    by_key = {tuple(g[k] for k in GROUP): g for g in groups}
    verdict = verdicts(checks)
    for r in rows:
        passed, detail = verdict.get(r["model_name"], (None, None))
        g = by_key.get(tuple(r[k] for k in GROUP)) if r["status"] == "ok" else None
        r.update(
            verify_passed=passed,
            verify_detail=detail,
            accuracy_spread_pts=g["spread_pts"] if g else None,
            accuracy_parity=g["parity"] if g else None,
        )
    return groups
