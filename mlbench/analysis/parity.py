"""Cross-framework verdicts added to the results when they are rebuilt: verify and accuracy parity.

Accuracy parity is judged on trained models. A cell whose learning curve still moves (its last epoch
moved validation accuracy by more than the tolerance, or it trained one epoch: no curve to show it
settled) is `not_converged`, and the verdict says what would converge it; models that have not
learned at all are `untrained` (see `LEARNED_LOSS_SHARE`).

Every framework is evaluated on the same validation samples, so two frameworks' accuracies differ by
the samples one gets right and the other does not. With one training seed, each pair's difference
gets a 95% interval from the discordant samples of the rows' per-sample correctness
(`paired_interval`). With several (`seeds`), the seed varies the initial weights, dropout and the
batch order, and the same seed starts every framework from the same weights and order: the pair's
difference is the mean over seeds of the per-seed differences, its interval the seeds' spread
(Student t) together with the validation samples' part (the per-sample difference averaged over
seeds). The verdict says what that interval can tell against `accuracy_parity_pts`: `equivalent`
(inside the tolerance), `different` (outside), `unresolved` (it cannot tell; what would resolve it:
validation samples or seeds)."""

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
from workers.common import specs, stats

# the cells one verdict compares: every framework and every training seed of one configuration
GROUP = ("model_name", "device", "precision", "batch_size", "dataset", "epochs", "deterministic")


def group_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """A row's group: GROUP's values, `deterministic` as a bool (null in rows from before it: off)."""
    return tuple(bool(r.get(k)) if k == "deterministic" else r.get(k) for k in GROUP)


VERDICTS = ("equivalent", "different", "unresolved", "untrained", "not_converged")
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
    seeds: int = 1  # training seeds the difference is the mean over (each framework ran each of them)
    seed_sd_pts: float | None = None  # the per-seed differences' standard deviation (2+ seeds)
    seeds_needed: int | None = None  # seeds that would resolve it at this spread (unresolved, 2+ seeds)

    @property
    def pair(self) -> str:
        return f"{self.a} vs {self.b}"

    @property
    def reach(self) -> float:
        """How far the interval reaches from zero: the pair closest to leaving the tolerance."""
        return max(abs(self.low_pts), abs(self.high_pts))


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


MAX_SEEDS = 64  # the most seeds `seeds_needed` looks for


def compare_seeds(a: list[dict[str, Any]], b: list[dict[str, Any]], tolerance_pts: float) -> PairedDifference:
    """a's accuracy against b's over the same training seeds (rows aligned by seed, 2 or more): the mean
    of the per-seed differences, with a 95% interval of two parts, added in quadrature: the seeds'
    spread (Student t over the per-seed differences: another set of seeds lands elsewhere) and the
    validation samples' (the per-sample difference averaged over seeds: another set of samples lands
    elsewhere; paired where every row carries per-sample correctness, else two independent proportions)."""
    n_seeds = len(a)
    acc_a = np.array([r["final_val_accuracy"] for r in a], dtype=np.float64)
    acc_b = np.array([r["final_val_accuracy"] for r in b], dtype=np.float64)
    per_seed = acc_a - acc_b
    d = float(per_seed.mean())
    sd = float(per_seed.std(ddof=1))
    n = min(r.get("val_samples") or 0 for r in (*a, *b))
    bits = [correct_vector(r.get("val_correct_bits"), n) for r in (*a, *b)]
    paired = n > 0 and all(v is not None and len(v) == n for v in bits)
    only = None
    if paired:
        delta = np.mean([x.astype(float) - y.astype(float) for x, y in zip(bits[:n_seeds], bits[n_seeds:])], axis=0)
        se_val = float(delta.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        # each seed's discordant shares, averaged: McNemar's interval on them is the floor of the samples' part
        # (a normal standard error of 0 where two models agree on 24 samples would claim an exact difference)
        discordant = np.array([(np.sum(x & ~y), np.sum(~x & y)) for x, y in zip(bits[:n_seeds], bits[n_seeds:])])
        only = tuple(float(v) / n for v in discordant.mean(axis=0))
    else:
        pa, pb = float(acc_a.mean()), float(acc_b.mean())
        se_val = math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n) if n else math.inf
    t = tolerance_pts / 100

    def samples_half(m: int) -> float:
        half = Z95 * se_val * math.sqrt(n / m)
        if only is not None:
            _, low, high = paired_interval(round(only[0] * m), round(only[1] * m), m)
            half = max(half, (high - low) / 2)
        return half

    def interval(seeds: int, samples: int) -> tuple[float, float]:
        half = math.hypot(stats.t_quantile(0.95, seeds - 1) * sd / math.sqrt(seeds), samples_half(samples))
        return d - half, d + half

    low, high = interval(n_seeds, n)
    verdict = verdict_of(low, high, t)
    need_samples = need_seeds = None
    if verdict == "unresolved":
        need_samples = samples_needed(lambda m: interval(n_seeds, m), n, t)
        need_seeds = next(
            (k for k in range(n_seeds + 1, MAX_SEEDS + 1) if verdict_of(*interval(k, n), t) != "unresolved"), None
        )
    return PairedDifference(
        a[0]["framework"], b[0]["framework"], 100 * d, 100 * low, 100 * high, paired, n, verdict,
        need_samples, n_seeds, 100 * sd, need_seeds,
    )  # fmt: skip


def convergence(r: dict[str, Any], tolerance_pts: float) -> tuple[bool | None, str]:
    """Whether a cell's learning curve has settled enough for its accuracy to be judged, and the
    evidence. Still moving: the last epoch moved validation accuracy by more than the tolerance, unless
    it went back against a move beyond the tolerance the epoch before: that is a settled curve's wobble on a finite validation set (a model near chance
    went 22.9, 20.1, 25.2, 20.9% on 512 samples). With two epochs the last move alone decides; one
    epoch is no curve: not converged. (None, '') where the row holds no per-epoch record."""
    epochs = r.get("epochs_detail")
    curve = [100 * e["val_accuracy"] for e in ([] if epochs is None else epochs) if e.get("val_accuracy") is not None]
    if not curve:
        return None, ""
    if len(curve) == 1:
        return False, f"one epoch ({curve[0]:.1f}%): no learning curve shows it has settled"
    moves = [b - a for a, b in itertools.pairwise(curve)]
    said = "validation accuracy by epoch " + ", ".join(f"{v:.1f}%" for v in curve[-3:])
    if abs(moves[-1]) <= tolerance_pts:
        return True, f"{said}: the last epoch moved it {moves[-1]:+.1f} points"
    if len(moves) >= 2 and abs(moves[-2]) > tolerance_pts and (moves[-1] > 0) != (moves[-2] > 0):
        return (
            True,
            f"{said}: it moves back and forth, {moves[-2]:+.1f} then {moves[-1]:+.1f} points, around where it settled",
        )
    return False, f"{said}: the last epoch still moved it {moves[-1]:+.1f} points"


def group_verdict(pairs: list[PairedDifference]) -> str | None:
    """A group is different if any pair is, equivalent if every pair is, else unresolved."""
    if not pairs:
        return None
    found = {p.verdict for p in pairs}
    return "different" if "different" in found else "equivalent" if found == {"equivalent"} else "unresolved"


def deciding(pairs: list[PairedDifference], verdict: str | None) -> PairedDifference | None:
    """The pair whose interval decided the group's verdict, the one a row shows: the largest different
    difference; the unresolved interval reaching furthest; where all are equivalent, the interval closest
    to the tolerance; otherwise (not judged) the largest difference."""
    if not pairs:
        return None
    if verdict in ("different", "unresolved"):
        same = [p for p in pairs if p.verdict == verdict]
        return max(same, key=lambda p: abs(p.diff_pts) if verdict == "different" else p.reach)
    if verdict == "equivalent":
        return max(pairs, key=lambda p: p.reach)
    return max(pairs, key=lambda p: abs(p.diff_pts))


def _most(pairs: list[PairedDifference], what: str) -> int | None:
    """The most samples (or seeds) any unresolved pair needs; None where one of them no size resolves."""
    needs = [getattr(p, what) for p in pairs if p.verdict == "unresolved"]
    return None if not needs or any(n is None for n in needs) else max(needs)


def _seed_sets(members: list[dict[str, Any]]) -> tuple[dict[str, dict[int, dict[str, Any]]], list[int]]:
    """Each framework's rows by training seed, and the seeds every framework ran."""
    by_fw: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in members:
        by_fw[r["framework"]][r.get("seed") or 0] = r
    common = sorted(set.intersection(*(set(x) for x in by_fw.values()))) if by_fw else []
    return by_fw, common


def accuracy_groups(rows: list[dict[str, Any]], tolerance_pts: float) -> list[dict[str, Any]]:
    """Per model/device/precision/batch: every framework's final validation accuracy (its mean over the
    seeds every framework ran, and its spread over them), every pair's difference with its interval,
    the group's verdict and the pair that decided it."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r["final_val_accuracy"] is not None and r.get("val_samples"):
            groups[group_key(r)].append(r)
    out = []
    for key, members in groups.items():
        by_fw, common = _seed_sets(members)
        seeds = common if common else [min(x) for x in by_fw.values()][:1]
        judged = (
            [by_fw[fw][s] for fw in by_fw for s in common] if common else [min(x.items())[1] for x in by_fw.values()]
        )
        frameworks = list(by_fw)
        if len(common) >= 2:
            pairs = [
                compare_seeds([by_fw[a][s] for s in common], [by_fw[b][s] for s in common], tolerance_pts)
                for a, b in itertools.combinations(frameworks, 2)
            ]
        else:
            pairs = [compare_pair(a, b, tolerance_pts) for a, b in itertools.combinations(judged, 2)]
        accs = {
            fw: float(np.mean([by_fw[fw][s]["final_val_accuracy"] for s in common or [min(by_fw[fw])]]))
            for fw in frameworks
        }
        seed_sd = {
            fw: 100 * float(np.std([by_fw[fw][s]["final_val_accuracy"] for s in common], ddof=1))
            if len(common) >= 2
            else None
            for fw in frameworks
        }
        verdict = group_verdict(pairs)
        settled = {(r["framework"], r.get("seed") or 0): convergence(r, tolerance_pts) for r in judged}
        moving = [(fw, seed, why) for (fw, seed), (ok, why) in settled.items() if ok is False]
        if verdict is not None and untrained(judged):
            verdict = "untrained"
        elif verdict is not None and moving:
            verdict = "not_converged"
        decided = deciding(pairs, verdict)
        out.append(
            {
                **dict(zip(GROUP, key)),
                "seeds": seeds,
                "val_accuracy": accs,
                "seed_sd_pts": seed_sd,
                "spread_pts": (max(accs.values()) - min(accs.values())) * 100 if len(accs) > 1 else None,
                "verdict": verdict,
                "parity": None if verdict not in ("equivalent", "different") else verdict == "equivalent",
                "val_loss": {r["framework"]: r.get("final_val_loss") for r in judged},
                "not_converged": [{"framework": fw, "seed": seed, "evidence": why} for fw, seed, why in moving],
                "decided_by": None if decided is None else asdict(decided),
                "pair": None if decided is None else decided.pair,
                # more samples or seeds judge neither models that have not learned nor curves still moving
                # what resolves every unresolved pair: the most any of them needs
                "samples_needed": _most(pairs, "samples_needed") if verdict == "unresolved" else None,
                "seeds_needed": _most(pairs, "seeds_needed") if verdict == "unresolved" else None,
                "pairs": [asdict(p) for p in pairs],
                "tolerance_pts": tolerance_pts,
            }
        )
    return out


def describe(r: dict[str, Any], tolerance_pts: float | None) -> str:
    """A row's accuracy-parity verdict in words, with the interval it rests on and the pair it comes from."""
    verdict = r.get("accuracy_parity_verdict")
    if verdict is None:
        return "not judged (one framework, or no accuracy)"
    t = "the tolerance" if tolerance_pts is None else f"±{tolerance_pts:g} points"
    d, low, high = r["accuracy_diff_pts"], r["accuracy_diff_low_pts"], r["accuracy_diff_high_pts"]
    seeds = r.get("accuracy_seeds") or 1
    over = f" over {seeds} seeds" if seeds > 1 else ""
    pair = f" ({r['accuracy_pair']})" if r.get("accuracy_pair") else ""
    seen = f"{d:+.1f} points{pair}{over} (95% CI {low:+.1f} to {high:+.1f})"
    sd = r.get("accuracy_seed_sd_pts")
    spread = f"; {r['framework']}'s own spread over seeds {sd:.1f} points (sd)" if sd is not None else ""
    if verdict == "equivalent":
        return f"equivalent: {seen} lies within {t}{spread}"
    if verdict == "different":
        return f"DIFFERENT: {seen} lies outside {t}{spread}"
    if verdict == "untrained":
        ln_k, loss = chance_loss(r["model_name"]), r.get("final_val_loss")
        return (
            f"not judged: the models have not learned yet (validation loss {loss:.3f} in {r['framework']}, a "
            f"uniform guess's {ln_k:.3f}); their accuracies rest on near-ties between classes, so {seen} says nothing of "
            "parity. Train longer to judge it (configs/parity.yaml is sized for it)"
        )
    if verdict == "not_converged":
        return (
            f"not_converged: not judged, the learning curve still moves ({r.get('accuracy_convergence') or 'see the epochs'}"
            f"), so {seen} compares models mid-training. More epochs, or target_accuracy (time to a target), "
            "would judge it"
        )
    more = []
    if r.get("accuracy_samples_needed"):
        more.append(f"about {r['accuracy_samples_needed']:,} validation samples")
    if r.get("accuracy_seeds_needed"):
        more.append(f"{r['accuracy_seeds_needed']} seeds")
    said = " or ".join(more) + " would tell" if more else "no sample size decides a difference on it"
    n = r.get("val_samples")
    return f"unresolved: {seen} straddles {t}{spread}; {n} samples{over or ''} cannot tell ({said})"


def annotate(
    rows: list[dict[str, Any]], verified: dict[str, tuple[bool, str]], tolerance_pts: float
) -> list[dict[str, Any]]:
    """Fill the verify columns (from `verified`: model -> passed, detail) and the accuracy-parity ones,
    in place; returns the accuracy groups."""
    groups = accuracy_groups(rows, tolerance_pts)
    by_key = {group_key(g): g for g in groups}
    for r in rows:
        passed, detail = verified.get(r["model_name"], (None, None))
        g = by_key.get(group_key(r)) if r["status"] == "ok" else None
        w = (g and g["decided_by"]) or {}  # the pair that decided the group's verdict, with its interval
        settled, said = convergence(r, tolerance_pts) if r["status"] == "ok" else (None, "")
        moving = "; ".join(
            f"{x['framework']} seed {x['seed']}: {x['evidence']}" for x in (g or {}).get("not_converged", [])
        )
        r.update(
            verify_passed=passed,
            verify_detail=detail,
            converged=settled,
            convergence_evidence=said or None,
            accuracy_spread_pts=g["spread_pts"] if g else None,
            accuracy_parity=g["parity"] if g else None,
            accuracy_parity_verdict=g["verdict"] if g else None,
            accuracy_pair=g["pair"] if g else None,
            accuracy_diff_pts=w.get("diff_pts"),
            accuracy_diff_low_pts=w.get("low_pts"),
            accuracy_diff_high_pts=w.get("high_pts"),
            accuracy_samples_needed=g["samples_needed"] if g else None,
            accuracy_seeds=len(g["seeds"]) if g else None,
            accuracy_seeds_needed=g["seeds_needed"] if g else None,
            accuracy_seed_mean=g["val_accuracy"].get(r["framework"]) if g else None,
            accuracy_seed_sd_pts=g["seed_sd_pts"].get(r["framework"]) if g else None,
            accuracy_convergence=moving or None,
        )
    return groups
