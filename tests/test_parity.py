"""Accuracy parity as the sample can tell it: paired differences on the same validation samples, an
interval, and equivalent / different / unresolved against the tolerance."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mlbench.analysis import parity
from mlbench.present import content


def warnings(rows: list[dict]) -> list[str]:
    """The warnings both outputs print for these rows."""
    return content.gather(rows, {}, {}, charts_too=False).warnings


def bits(right: np.ndarray) -> str:
    return base64.b64encode(np.packbits(right)).decode()


def row(framework: str, right: np.ndarray | None, acc: float | None = None, **kw) -> dict:
    n = len(right) if right is not None else kw.pop("n")
    return {
        "framework": framework,
        "status": "ok",
        "model_name": "mlp",
        "device": "cpu",
        "precision": "fp32",
        "batch_size": 32,
        "dataset": "synthetic",
        "epochs": 1,
        "seed": 0,
        "val_samples": n,
        "final_val_accuracy": float(right.mean()) if right is not None else acc,
        "val_correct_bits": bits(right) if right is not None else None,
        **kw,
    }


def flip(right: np.ndarray, where: range) -> np.ndarray:
    out = right.copy()
    out[list(where)] = ~out[list(where)]
    return out


BASE = np.random.default_rng(0).random(1024) < 0.85  # an 85%-accurate model's record on 1,024 samples


def test_the_same_predictions_on_enough_samples_are_equivalent_and_on_few_unresolved() -> None:
    same = parity.compare_pair(row("a", BASE), row("b", BASE.copy()), 2.0)
    assert same.paired and same.verdict == "equivalent" and same.diff_pts == 0
    assert -0.6 < same.low_pts < 0 < same.high_pts < 0.6  # 0 discordant of 1,024: +-q's 97.5% bound
    few = parity.compare_pair(row("a", BASE[:24]), row("b", BASE[:24].copy()), 2.0)
    assert few.verdict == "unresolved" and few.high_pts > 10  # 24 agreeing samples allow a 17-point gap
    assert few.samples_needed is not None and few.samples_needed > 24


def test_a_real_gap_is_different_and_a_small_one_the_sample_cannot_place_is_unresolved() -> None:
    worse = BASE.copy()
    worse[np.flatnonzero(BASE)[:80]] = False  # b misses 80 samples a gets right: 7.8 points
    gap = parity.compare_pair(row("a", BASE), row("b", worse), 2.0)
    assert gap.verdict == "different" and gap.diff_pts == pytest.approx(100 * 80 / 1024) and gap.low_pts > 2
    # 29 samples flipped: a difference near the tolerance, an interval that reaches across it
    a, b = BASE.copy(), flip(BASE, range(0, 29))
    got = parity.compare_pair(row("a", a), row("b", b), 2.0)
    assert got.verdict == "unresolved" and (got.low_pts < 2 < got.high_pts or got.low_pts < -2 < got.high_pts)
    need = got.samples_needed
    assert need is not None and need > 1024
    # at that size, the same discordant shares resolve; one sample fewer does not
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    shares = lambda m: parity.paired_interval(round(only_a * m / 1024), round(only_b * m / 1024), m)[1:]  # noqa: E731
    assert parity.verdict_of(*shares(need), 0.02) != "unresolved"
    assert parity.verdict_of(*shares(need - 1), 0.02) == "unresolved"


def test_pairing_is_what_resolves_it() -> None:
    """The same two accuracies: paired (they disagree on 4 samples) the verdict is equivalent; as two
    independent proportions (no per-sample record) the interval is ~7 points wide and cannot tell."""
    b = flip(BASE, range(0, 4))
    paired = parity.compare_pair(row("a", BASE), row("b", b), 2.0)
    unpaired = parity.compare_pair(
        row("a", None, float(BASE.mean()), n=1024), row("b", None, float(b.mean()), n=1024), 2.0
    )
    assert paired.paired and paired.verdict == "equivalent"
    assert not unpaired.paired and unpaired.verdict == "unresolved"
    assert unpaired.high_pts - unpaired.low_pts > 4 * (paired.high_pts - paired.low_pts)


def test_a_group_is_different_if_any_pair_is_and_the_rows_carry_its_widest_interval() -> None:
    worse = BASE.copy()
    worse[np.flatnonzero(BASE)[:80]] = False
    rows = [row("a", BASE), row("b", BASE.copy()), row("c", worse)]
    groups = parity.annotate(rows, {}, 2.0)
    assert groups[0]["verdict"] == "different" and len(groups[0]["pairs"]) == 3
    assert {r["accuracy_parity_verdict"] for r in rows} == {"different"} and rows[0]["accuracy_parity"] is False
    assert rows[0]["accuracy_diff_pts"] == pytest.approx(100 * 80 / 1024)
    assert "DIFFERENT" in parity.describe(rows[0], 2.0)


def test_the_report_warns_only_on_a_difference_the_sample_resolves() -> None:
    few = [row("a", BASE[:64]), row("b", flip(BASE[:64], range(0, 3)))]
    parity.annotate(few, {}, 2.0)
    assert few[0]["accuracy_parity_verdict"] == "unresolved"
    assert not any("Validation accuracy differs" in w for w in warnings(few))
    assert "unresolved" in parity.describe(few[0], 2.0) and "validation samples would tell" in parity.describe(
        few[0], 2.0
    )
    worse = BASE.copy()
    worse[np.flatnonzero(BASE)[:80]] = False
    far = [row("a", BASE), row("b", worse)]
    parity.annotate(far, {}, 2.0)
    assert any("Validation accuracy differs" in w for w in warnings(far))


def test_models_that_have_not_learned_are_not_judged_and_one_that_cannot_learn_is_different() -> None:
    """At a uniform guess's loss (ln 10 for the MLP's ten classes) accuracy rests on near-ties: a gap
    the paired interval alone calls different is `untrained`, and the report does not warn. Where one
    framework learned and another did not, that is the difference parity is for."""
    worse = BASE.copy()
    worse[np.flatnonzero(BASE)[:300]] = False  # a 56-point gap: different on its own
    at_chance = 0.95 * np.log(10)
    rows = [row("a", BASE, final_val_loss=at_chance), row("b", worse, final_val_loss=at_chance + 0.01)]
    groups = parity.annotate(rows, {}, 2.0)
    assert groups[0]["verdict"] == "untrained" and rows[0]["accuracy_parity"] is None
    assert rows[0]["accuracy_samples_needed"] is None  # more samples would not judge them
    assert not any("Validation accuracy differs" in w for w in warnings(rows))
    assert parity.describe(rows[0], 2.0).startswith("not judged: the models have not learned yet")
    learned = [row("a", BASE, final_val_loss=0.4), row("b", worse, final_val_loss=at_chance)]
    parity.annotate(learned, {}, 2.0)
    assert learned[0]["accuracy_parity_verdict"] == "different"
    # the share of a uniform guess's loss below which a model counts as learning
    trained = [row("a", BASE, final_val_loss=0.85 * np.log(10)), row("b", worse, final_val_loss=0.4)]
    parity.annotate(trained, {}, 2.0)
    assert trained[0]["accuracy_parity_verdict"] == "different"
    unknown = [row("a", BASE), row("b", worse)]  # no losses recorded: judged on accuracy alone
    parity.annotate(unknown, {}, 2.0)
    assert unknown[0]["accuracy_parity_verdict"] == "different"
