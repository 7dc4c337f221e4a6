"""Cross-framework verdicts added to the results when they are rebuilt: verify and accuracy parity.

Accuracy parity is a paired question: every framework is evaluated on the same validation samples,
so two frameworks' accuracies differ by the samples one gets right and the other does not. Each pair's
difference gets a 95% interval (McNemar-style, from the discordant samples of the rows' per-sample
correctness; `paired_interval`), and the verdict says what that interval can tell against `accuracy_parity_pts`:
`equivalent` (it lies inside the tolerance), `different` (outside), `unresolved` (the sample cannot
tell; `accuracy_samples_needed` says how many validation samples would, at this difference), or
`untrained` where no framework's model has learned enough for its accuracy to mean anything (see
`LEARNED_LOSS_SHARE`); a group where some learned and some did not is judged as usual."""

from __future__ import annotations

import base64
import itertools
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from mlbench.analysis import recommend
from workers.common import specs

GROUP = ("model_name", "device", "precision", "batch_size", "dataset", "epochs", "seed")


VERDICTS = ("equivalent", "different", "unresolved", "untrained")
# still above this share of a uniform guess's loss (ln K for K classes): not learned; its argmax rests on
# near-ties that rounding and dropout tip either way (docs/measurement.md has the case that set it)
LEARNED_LOSS_SHARE = 0.9
Z95 = NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class PairedDifference:
    """The difference of two frameworks' accuracies on the same validation samples, in points, with
    its 95% interval, and what that interval can tell against the tolerance."""

    a: str
    b: str
    diff_pts: float  # a's accuracy minus b's
    low_pts: float
    high_pts: float
    paired: bool  # from per-sample correctness; else the two accuracies as independent samples
    n: int
    verdict: str  # equivalent | different | unresolved
    samples_needed: int | None  # validation samples that would resolve it at this difference (unresolved only)


def correct_vector(bits: str | None, n: int | None) -> np.ndarray | None:
    """A row's per-sample correctness (val_correct_bits) as booleans, or None."""
    if not bits or not n:
        return None
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8))[:n].astype(bool)


def paired_interval(only_a: int, only_b: int, n: int) -> tuple[float, float, float]:
    """The difference of two accuracies on the same n samples (a's minus b's) and its 95% interval,
    McNemar-style: only the discordant samples (one right, the other wrong) move it. The difference
    is q(2 pi - 1), q the discordant share and pi the share of those that a gets right; each gets a
    97.5% Wilson interval (both together: at least 95%), and the difference's interval is their image.
    With no discordant sample pi is unknown, and the interval is +-q's upper bound: 24 samples on which
    two models agree everywhere still allow a 14-point difference in the population, 1,000 only 0.4."""
    m = only_a + only_b
    d = (only_a - only_b) / n
    q_low, q_high = recommend.wilson_interval(m / n, n, 0.975)
    pi_low, pi_high = recommend.wilson_interval(only_a / m, m, 0.975) if m else (0.0, 1.0)
    low = min(q * (2 * pi_low - 1) for q in (q_low, q_high))
    high = max(q * (2 * pi_high - 1) for q in (q_low, q_high))
    return d, low, high


def verdict_of(low: float, high: float, tolerance: float) -> str:
    if -tolerance < low and high < tolerance:
        return "equivalent"
    if low > tolerance or high < -tolerance:
        return "different"
    return "unresolved"


MAX_SAMPLES = 10_000_000


def samples_needed(interval: Any, n: int, tolerance: float) -> int | None:
    """The fewest validation samples at which the same shares would resolve the verdict: `interval(m)`
    is the interval those shares give on m samples. None where none up to MAX_SAMPLES does (a
    difference on the tolerance itself)."""
    hi = n
    while verdict_of(*interval(hi), tolerance) == "unresolved":
        if hi >= MAX_SAMPLES:
            return None
        hi *= 2
    lo = hi // 2 if hi > n else n
    while lo < hi:
        mid = (lo + hi) // 2
        if verdict_of(*interval(mid), tolerance) == "unresolved":
            lo = mid + 1
        else:
            hi = mid
    return hi


def compare_pair(a: dict[str, Any], b: dict[str, Any], tolerance_pts: float) -> PairedDifference:
    """a's accuracy against b's: paired where both rows carry per-sample correctness on the same
    samples, else as two independent proportions (the interval is then wider, never narrower)."""
    n = a.get("val_samples") or 0
    va, vb = correct_vector(a.get("val_correct_bits"), n), correct_vector(b.get("val_correct_bits"), n)
    paired = va is not None and vb is not None and len(va) == len(vb) == n and b.get("val_samples") == n
    if paired:
        only_a, only_b = int(np.sum(va & ~vb)), int(np.sum(~va & vb))
        d, low, high = paired_interval(only_a, only_b, n)

        def interval(m: int) -> tuple[float, float]:  # the same discordant shares on m samples
            return paired_interval(round(only_a * m / n), round(only_b * m / n), m)[1:]
    else:
        n = min(n, b.get("val_samples") or 0)
        pa, pb = a["final_val_accuracy"], b["final_val_accuracy"]
        d = pa - pb

        def interval(m: int) -> tuple[float, float]:  # two independent Wilson intervals (Newcombe's hybrid)
            (la, ua), (lb, ub) = recommend.wilson_interval(pa, m), recommend.wilson_interval(pb, m)
            return d - math.hypot(pa - la, ub - pb), d + math.hypot(ua - pa, pb - lb)

        low, high = interval(n)
    t = tolerance_pts / 100
    verdict = verdict_of(low, high, t)
    need = samples_needed(interval, n, t) if verdict == "unresolved" else None
    return PairedDifference(a["framework"], b["framework"], 100 * d, 100 * low, 100 * high, paired, n, verdict, need)


def chance_loss(model: str) -> float | None:
    """The cross-entropy of a uniform guess over the model's classes, ln K; None for an unknown model."""
    try:
        return math.log(specs.get_spec(model).num_classes)
    except KeyError:
        return None


def untrained(members: list[dict[str, Any]]) -> bool:
    """Whether no model of the group has learned enough for its accuracy to be compared (every final
    validation loss at or above LEARNED_LOSS_SHARE of a uniform guess's)."""
    ln_k = chance_loss(members[0]["model_name"])
    losses = [r.get("final_val_loss") for r in members]
    if ln_k is None or any(v is None or not math.isfinite(v) for v in losses):
        return False
    return all(v >= LEARNED_LOSS_SHARE * ln_k for v in losses)


def group_verdict(pairs: list[PairedDifference]) -> str | None:
    """A group is different if any pair is, equivalent if every pair is, else unresolved."""
    if not pairs:
        return None
    found = {p.verdict for p in pairs}
    return "different" if "different" in found else "equivalent" if found == {"equivalent"} else "unresolved"


def accuracy_groups(rows: list[dict[str, Any]], tolerance_pts: float) -> list[dict[str, Any]]:
    """Per model/device/precision/batch: every framework's final validation accuracy, every pair's
    difference with its interval, and the group's verdict."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r["final_val_accuracy"] is not None and r.get("val_samples"):
            groups[tuple(r[k] for k in GROUP)].append(r)
    out = []
    for key, members in groups.items():
        accs = {r["framework"]: r["final_val_accuracy"] for r in members}
        pairs = [compare_pair(a, b, tolerance_pts) for a, b in itertools.combinations(members, 2)]
        widest = max(pairs, key=lambda p: abs(p.diff_pts), default=None)
        verdict = group_verdict(pairs)
        if verdict is not None and untrained(members):
            verdict = "untrained"
        out.append(
            {
                **dict(zip(GROUP, key)),
                "val_accuracy": accs,
                "spread_pts": (max(accs.values()) - min(accs.values())) * 100 if len(accs) > 1 else None,
                "verdict": verdict,
                "parity": None if verdict in (None, "unresolved", "untrained") else verdict == "equivalent",
                "val_loss": {r["framework"]: r.get("final_val_loss") for r in members},
                "widest": None if widest is None else asdict(widest),
                # more samples would not judge models that have not learned
                "samples_needed": None
                if verdict == "untrained"
                else max((p.samples_needed or 0 for p in pairs), default=0) or None,
                "pairs": [asdict(p) for p in pairs],
                "tolerance_pts": tolerance_pts,
            }
        )
    return out


def describe(r: dict[str, Any], tolerance_pts: float | None) -> str:
    """A row's accuracy-parity verdict in words, with the interval it rests on."""
    verdict = r.get("accuracy_parity_verdict")
    if verdict is None:
        return "not judged (one framework, or no accuracy)"
    t = "the tolerance" if tolerance_pts is None else f"±{tolerance_pts:g} points"
    d, low, high = r["accuracy_diff_pts"], r["accuracy_diff_low_pts"], r["accuracy_diff_high_pts"]
    seen = f"the largest difference, {d:+.1f} points (95% CI {low:+.1f} to {high:+.1f})"
    if verdict == "equivalent":
        return f"equivalent: {seen}, lies within {t}"
    if verdict == "different":
        return f"DIFFERENT: {seen}, lies outside {t}"
    if verdict == "untrained":
        ln_k, loss = chance_loss(r["model_name"]), r.get("final_val_loss")
        return (
            f"not judged: the models have not learned yet (validation loss {loss:.3f} in {r['framework']}, a "
            f"uniform guess's {ln_k:.3f}); their accuracies rest on near-ties between classes, so {seen} says nothing of "
            "parity. Train longer to judge it (configs/parity.yaml is sized for it)"
        )
    need = r.get("accuracy_samples_needed")
    more = f"about {need:,} validation samples would tell" if need else "no sample size decides a difference on it"
    return f"unresolved: {seen}, straddles {t}; the {r.get('val_samples')} samples cannot tell ({more})"


def annotate(
    rows: list[dict[str, Any]], verified: dict[str, tuple[bool, str]], tolerance_pts: float
) -> list[dict[str, Any]]:
    """Fill the verify columns (from `verified`: model -> passed, detail) and the accuracy-parity ones,
    in place; returns the accuracy groups."""
    groups = accuracy_groups(rows, tolerance_pts)
    by_key = {tuple(g[k] for k in GROUP): g for g in groups}
    for r in rows:
        passed, detail = verified.get(r["model_name"], (None, None))
        g = by_key.get(tuple(r[k] for k in GROUP)) if r["status"] == "ok" else None
        w = (g and g["widest"]) or {}  # the group's largest difference, with its interval
        r.update(
            verify_passed=passed,
            verify_detail=detail,
            accuracy_spread_pts=g["spread_pts"] if g else None,
            accuracy_parity=g["parity"] if g else None,
            accuracy_parity_verdict=g["verdict"] if g else None,
            accuracy_diff_pts=w.get("diff_pts"),
            accuracy_diff_low_pts=w.get("low_pts"),
            accuracy_diff_high_pts=w.get("high_pts"),
            accuracy_samples_needed=g["samples_needed"] if g else None,
        )
    return groups
