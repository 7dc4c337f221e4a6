"""Accuracy verdicts on trained models, from constructed learning curves and seed sets: a curve still
moving is not_converged (and warns of nothing), several seeds judge the difference against the seeds'
spread, the row shows the pair that decided, effects and `compare` read convergence and update counts."""

from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlbench.analysis import compare, parity, recommend
from mlbench.cells import expand
from mlbench.config import ConfigError, parse_suite
from mlbench.present import content
from mlbench.results import schema
from workers.common import data as datasets

N = 1024


def bits(right: np.ndarray) -> str:
    return base64.b64encode(np.packbits(right)).decode()


def row(framework: str, right: np.ndarray, seed: int = 0, curve: tuple[float, ...] | None = None, **kw) -> dict:
    """A stored row: every column present; its learning curve ends at its accuracy unless `curve` says."""
    acc = float(right.mean())
    r = dict.fromkeys(schema.SCHEMA.names)
    r.update(
        framework=framework,
        status="ok",
        model_name="mlp",
        device="cpu",
        precision="fp32",
        batch_size=32,
        dataset="synthetic",
        epochs=3,
        seed=seed,
        train_samples=2048,
        val_samples=len(right),
        final_val_accuracy=acc,
        val_correct_bits=bits(right),
        epochs_detail=[{"epoch": i, "val_accuracy": v} for i, v in enumerate(curve or (0.5, acc - 0.003, acc))],
        spec_json=json.dumps({"framework": framework, "seed": seed}),
        cell_id=f"{framework}-{seed}",
        worker_module=f"workers.{framework}_worker",
    )
    r.update(kw)
    return r


def model(seed: int, accuracy: float, jitter: int = 0) -> np.ndarray:
    """One seed's record on N fixed samples: samples are right by how easy they are (shared by every
    framework) and the seed's own luck; `jitter` flips that many of them (arithmetic noise)."""
    easy = np.random.default_rng(99).random(N)
    luck = np.random.default_rng(seed).random(N) * 0.1
    right = easy + luck > np.quantile(easy + luck, 1 - accuracy)
    if jitter:
        where = np.random.default_rng(1000 + seed).choice(N, jitter, replace=False)
        right[where] = ~right[where]
    return right


def test_a_curve_still_moving_is_not_converged_and_says_what_would_converge_it() -> None:
    right = model(0, 0.8)
    assert parity.convergence(row("a", right), 2.0)[0] is True
    moving = row("a", right, curve=(0.2, 0.55, 0.8))  # +25 points in the last epoch
    settled, said = parity.convergence(moving, 2.0)
    assert settled is False and "+25.0 points" in said
    wobble = row("a", right, curve=(0.145, 0.229, 0.201))  # +8.4 then -2.7: a near-chance model's plateau
    assert parity.convergence(wobble, 2.0)[0] is True and "back and forth" in parity.convergence(wobble, 2.0)[1]
    climbing = row("a", right, curve=(0.174, 0.199, 0.252))  # +2.5 then +5.3: still climbing
    assert parity.convergence(climbing, 2.0)[0] is False
    flat_then_up = row("a", right, curve=(0.10, 0.099, 0.40))  # -0.1 is no direction: +30 still moves
    assert parity.convergence(flat_then_up, 2.0)[0] is False
    one = row("a", right, curve=(0.8,))
    assert parity.convergence(one, 2.0)[0] is False and "one epoch" in parity.convergence(one, 2.0)[1]
    assert parity.convergence({**row("a", right), "epochs_detail": None}, 2.0) == (None, "")
    # 36 points apart, "different" on the sample alone: a curve still moving is not judged, nor warned of
    worse = model(0, 0.44)
    rows = [moving, row("b", worse, curve=(0.1, 0.3, 0.44))]
    parity.annotate(rows, {}, 2.0)
    assert {r["accuracy_parity_verdict"] for r in rows} == {"not_converged"} and rows[0]["accuracy_parity"] is None
    said = parity.describe(rows[0], 2.0)
    assert said.startswith("not_converged") and "More epochs, or target_accuracy" in said and "+25.0 points" in said
    assert rows[0]["converged"] is False and "+25.0" in rows[0]["convergence_evidence"]
    warned = content.gather(rows, {}, {}, charts_too=False).warnings
    assert not any("Validation accuracy differs" in w for w in warned)
    settled_rows = [row("a", right), row("b", worse)]  # the same gap on settled curves: different, warned
    parity.annotate(settled_rows, {}, 2.0)
    assert settled_rows[0]["accuracy_parity_verdict"] == "different"
    warned = content.gather(settled_rows, {}, {}, charts_too=False).warnings
    assert any("Validation accuracy differs" in w and "mlp fp32 bs32" in w for w in warned)  # names the batch


def frameworks_over_seeds(shift: dict[str, float], jitter: dict[str, int], seeds=(0, 1, 2)) -> list[dict]:
    return [
        row(fw, model(s, 0.85 + shift.get(fw, 0.0) + 0.01 * (s - 1), jitter.get(fw, 0)), seed=s)
        for fw in ("pytorch", "tensorflow", "jax")
        for s in seeds
    ]


def test_over_seeds_arithmetic_noise_is_equivalent_and_a_model_that_trains_worse_is_different() -> None:
    rows = frameworks_over_seeds({}, {"tensorflow": 6, "jax": 6})  # a few samples flipped per seed
    groups = parity.annotate(rows, {}, 2.0)
    assert len(groups) == 1 and groups[0]["seeds"] == [0, 1, 2] and groups[0]["verdict"] == "equivalent"
    r = rows[0]
    assert r["accuracy_seeds"] == 3 and r["accuracy_seed_sd_pts"] == pytest.approx(1.0, abs=0.2)  # 1 point apart
    assert r["accuracy_seed_mean"] == pytest.approx(np.mean([x["final_val_accuracy"] for x in rows[:3]]))
    assert "over 3 seeds" in parity.describe(r, 2.0) and "spread over seeds" in parity.describe(r, 2.0)
    worse = frameworks_over_seeds({"pytorch": -0.08}, {"tensorflow": 6, "jax": 6})  # lr/10: 8 points lower
    parity.annotate(worse, {}, 2.0)
    assert worse[0]["accuracy_parity_verdict"] == "different"
    assert worse[0]["accuracy_pair"].startswith("pytorch vs") and worse[0]["accuracy_diff_high_pts"] < -2


def test_seeds_that_spread_leave_it_unresolved_and_say_how_many_would_tell() -> None:
    """Two seeds whose differences disagree by 3 points (+1.5, -1.5): t with one degree of freedom cannot
    place a mean difference of 0 inside +-2, more validation samples would not either, and the verdict
    names the seeds that would."""
    rows = []
    for s, gap in ((0, 0.015), (1, -0.015)):
        rows += [row("pytorch", model(s, 0.85 + gap), seed=s), row("jax", model(s, 0.85), seed=s)]
    groups = parity.annotate(rows, {}, 2.0)
    pair = groups[0]["pairs"][0]
    assert groups[0]["verdict"] == "unresolved" and pair["seeds"] == 2 and pair["seed_sd_pts"] > 1.5
    assert rows[0]["accuracy_seeds_needed"] is not None and rows[0]["accuracy_seeds_needed"] > 2
    assert rows[0]["accuracy_samples_needed"] is None  # the seeds' spread is what no sample size removes
    assert f"{rows[0]['accuracy_seeds_needed']} seeds would tell" in parity.describe(rows[0], 2.0)


def test_two_seeds_that_agree_everywhere_on_few_samples_still_leave_the_samples_interval() -> None:
    """Over seeds the samples' part is never narrower than McNemar's interval: two frameworks right on all
    24 samples in both seeds allow a 17-point difference in the population, as one seed's pair does."""
    right = np.ones(24, dtype=bool)
    rows = [row(fw, right.copy(), seed=s) for fw in ("pytorch", "jax") for s in (0, 1)]
    parity.annotate(rows, {}, 2.0)
    assert rows[0]["accuracy_parity_verdict"] == "unresolved" and rows[0]["accuracy_diff_high_pts"] > 10


def test_the_row_shows_the_pair_that_decided_the_verdict() -> None:
    """a and b agree (equivalent); c is 1.8 points off b on 1,024 samples: unresolved, and the row's
    difference is c's pair, not the largest difference nor a's."""
    a = model(0, 0.85)
    c = a.copy()
    c[np.flatnonzero(a)[:19]] = False  # 19 fewer right: -1.9 points
    rows = [row("a", a), row("b", a.copy()), row("c", c)]
    parity.annotate(rows, {}, 2.0)
    assert rows[0]["accuracy_parity_verdict"] == "unresolved"
    low, high = rows[0]["accuracy_diff_low_pts"], rows[0]["accuracy_diff_high_pts"]
    assert "c" in rows[0]["accuracy_pair"] and (low < 2 < high or low < -2 < high)
    assert f"({rows[0]['accuracy_pair']})" in parity.describe(rows[0], 2.0)


def test_effects_compare_accuracy_only_at_equal_updates_on_settled_curves_and_state_the_updates() -> None:
    base = row("pytorch", model(0, 0.85), samples_per_second=1000.0, ci_kind="runs", repeats=5)
    bf16 = row("pytorch", model(0, 0.60), precision="bf16", samples_per_second=1500.0, ci_kind="runs", repeats=5)
    rows = [base, bf16]
    parity.annotate(rows, {}, 2.0)
    e = recommend.effects(rows, "precision", lambda p: p == "fp32")[0]
    assert e.updates == (192, 192) and e.accuracy_verdict == "lower"
    bf16["epochs_detail"] = [{"epoch": 0, "val_accuracy": 0.3}, {"epoch": 1, "val_accuracy": 0.6}]
    parity.annotate(rows, {}, 2.0)
    e = recommend.effects(rows, "precision", lambda p: p == "fp32")[0]
    assert e.accuracy_verdict.startswith("not comparable: not converged") and "more epochs" in e.accuracy_verdict
    from mlbench.present import results_md

    assert "192 optimizer updates each" in results_md.effect_line(e, "bf16", "fp32", "pytorch mlp")


def test_compare_judges_accuracy_with_a_floor_pairing_and_convergence() -> None:
    a = model(0, 0.85)[:512]
    drop5 = a.copy()
    drop5[np.flatnonzero(a)[:26]] = False  # -5.1 points on 512 samples, paired: beyond 2
    near = a.copy()
    near[np.flatnonzero(a)[:5]] = False  # -1 point: under the floor
    verdict = lambda x, y: compare.accuracy_change(x, y)[0]  # noqa: E731
    assert verdict(row("p", a), row("p", drop5)) == "regression"
    assert verdict(row("p", a), row("p", near)) == "unchanged"
    moving = row("p", drop5, curve=(0.2, 0.5, float(drop5.mean())))
    assert verdict(row("p", a), moving) == "unconfirmed"  # a curve mid-training swings: not a regression
    unpaired = {**row("p", drop5), "val_correct_bits": None}
    assert verdict(row("p", a), unpaired) == "unconfirmed"  # 5 points as two proportions of 512: cannot place it


def test_seeds_vary_the_training_not_the_data() -> None:
    base = {"name": "t", "frameworks": ["pytorch"], "models": ["mlp"], "batch_sizes": [32]}
    suite = parse_suite({**base, "seeds": 3}, "t.yaml")
    cells = expand(suite)
    assert [c.spec.seed for c in cells] == [0, 1, 2] and len({c.cell_id for c in cells}) == 3
    assert {datasets.data_seed(c.spec.to_dict()) for c in cells} == {0}  # every seed reads the seed-0 data
    assert parse_suite({**base, "seeds": [4, 7]}, "t.yaml").seed == 4
    one = expand(parse_suite(base, "t.yaml"))[0]
    assert one.cell_id == cells[0].cell_id  # one seed keeps its id; the data seed is in the spec only apart
    for bad, said in (
        ({"seeds": 3, "seed": 1}, "not both"),
        ({"seeds": 0}, "at least 1"),
        ({"seeds": [1, 1]}, "more than once"),
    ):
        with pytest.raises(ConfigError, match=said):
            parse_suite({**base, **bad}, "t.yaml")


def test_performance_verdicts_read_each_configuration_once() -> None:
    rows = [
        row("pytorch", model(s, 0.85), seed=s, samples_per_second=1000.0 + s, ci_kind="runs", repeats=5)
        for s in (0, 1, 2)
    ]
    assert [r["seed"] for r in recommend.first_seed(rows)] == [0]


@pytest.mark.e2e
def test_real_runs_over_seeds_tell_rounding_from_a_worse_learner_and_a_slower_one(tmp_path) -> None:
    """Three seeds of a real MLP, the PyTorch worker under four names: with every initial weight perturbed
    by 1e-6 (another framework's arithmetic) it is equivalent; trained with class 0 labelled 1 it settles
    as fast, 7-8 points lower, and parity calls it different; at a tenth of the learning rate it is still
    climbing, so the run with it is not_converged and says which curve moved."""
    pytest.importorskip("torch")
    import pandas as pd
    import yaml

    from tests.conftest import cli, suite_dict

    planted = ["rounding", "mislabel", "lowlr"]
    suite = suite_dict(
        name="acc",
        frameworks=["pytorch", *planted],
        workers=dict.fromkeys(planted, "tests.planted_accuracy_worker"),
        batch_sizes=[32],
        epochs=4,
        dataset={"name": "synthetic", "train_samples": 1024, "val_samples": 512},
        threads=1,  # the same arithmetic on every machine's run of a seed
    )
    del suite["seed"]
    suite["seeds"] = 3
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(suite))
    proc = cli("run", "acc.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "acc"
    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 12 and set(df.status) == {"ok"} and sorted(set(df.seed)) == [0, 1, 2]
    pairs = {(p["a"], p["b"]): p for p in json.loads((run / "parity.json").read_text())[0]["pairs"]}
    assert pairs[("pytorch", "rounding")]["verdict"] == "equivalent" and pairs[("pytorch", "rounding")]["seeds"] == 3
    for worse in ("mislabel", "lowlr"):
        assert pairs[("pytorch", worse)]["verdict"] == "different" and pairs[("pytorch", worse)]["low_pts"] > 2
    assert not df[df.framework == "lowlr"].converged.any()  # +6.6 to +16.6 points in the last epoch here
    assert set(df.accuracy_parity_verdict) == {"not_converged"} and "lowlr seed" in df.accuracy_convergence.iloc[0]
    warned = (run / "RESULTS.md").read_text().split("## Warnings")[1].split("\n## ")[0]
    assert "Validation accuracy differs" not in warned
    # the same rows without the slow learner: every curve settled, and the worse learner is different
    rows = [r for r in pq.read_table(run / "results.parquet").to_pylist() if r["framework"] != "lowlr"]
    assert all(r["converged"] for r in rows), [r["convergence_evidence"] for r in rows]
    groups = parity.annotate(rows, {}, 2.0)
    assert groups[0]["verdict"] == "different" and groups[0]["decided_by"]["b"] == "mislabel"
    assert "over 3 seeds" in parity.describe(next(r for r in rows if r["framework"] == "pytorch"), 2.0)


def test_a_failed_first_seed_does_not_hide_the_configuration() -> None:
    rows = [row("pytorch", model(s, 0.85), seed=s, samples_per_second=1000.0) for s in (0, 1, 2)]
    rows[0]["status"] = "failed"
    assert [r["seed"] for r in recommend.first_seed(rows)] == [1]
