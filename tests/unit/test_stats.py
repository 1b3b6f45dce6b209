"""tasks.stats: McNemar against scipy's exact binomial test, the paired bootstrap against a reference
loop and against the normal approximation, recall drops, on constructed predictions."""

import numpy as np
import pytest
from scipy.stats import binomtest

from tasks.evaluate import compute_metrics
from tasks.stats import Interval, mcnemar, paired_bootstrap_ci, recall_drops


def paired(b: int, c: int, both: int = 0, neither: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of challenger (a) and champion (z) with b rows only a gets right, c only z, shuffled."""
    a = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    z = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    order = np.random.default_rng(seed).permutation(a.size)
    return a[order], z[order]


@pytest.mark.parametrize(
    ("b", "c"),
    [(0, 0), (1, 0), (0, 1), (3, 3), (5, 6), (10, 3), (3, 10), (40, 17), (17, 40), (0, 25),
     (1000, 1100), (5000, 5200), (9000, 9500)],
)  # fmt: skip
def test_mcnemar_matches_scipy_binomtest(b, c):
    a, z = paired(b, c, both=500, neither=50)
    test = mcnemar(a, z)
    assert (test.b, test.c) == (b, c)
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert test.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert test.statistic == min(b, c) and "exact" in test.method


def test_mcnemar_ignores_concordant_rows_and_is_symmetric():
    assert mcnemar(*paired(40, 17)).p_value == mcnemar(*paired(40, 17, both=9000, neither=900)).p_value
    assert mcnemar(*paired(40, 17)).p_value == mcnemar(*paired(17, 40)).p_value


def reference_bootstrap(a, z, samples, alpha, seed):
    """The textbook loop: one resample of n row indices at a time from the same generator."""
    rng = np.random.default_rng(seed)
    n = len(a)
    stats = []
    for _ in range(samples):
        idx = rng.integers(0, n, size=n)
        stats.append(a[idx].mean() - z[idx].mean())
    return np.quantile(stats, [alpha / 2, 1 - alpha / 2])


@pytest.mark.parametrize("block_elements", [301, 5_000, 1 << 22])  # 1 resample per block .. all at once
def test_bootstrap_matches_reference_loop(block_elements):
    a, z = paired(30, 12, both=230, neither=29, seed=3)  # n = 301, odd on purpose
    ci = paired_bootstrap_ci(a, z, samples=400, alpha=0.1, seed=7, block_elements=block_elements)
    low, high = reference_bootstrap(a, z, 400, 0.1, 7)
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)
    assert ci.estimate == pytest.approx((30 - 12) / 301) and ci.level == pytest.approx(0.9)


def test_bootstrap_width_matches_normal_approximation_on_a_known_difference():
    n, d = 20_000, 0.02
    a, z = paired(600, 200, both=17_000, neither=2_200, seed=1)  # d = (600 - 200) / 20000
    ci = paired_bootstrap_ci(a, z, samples=2000, alpha=0.05, seed=42)
    assert ci.estimate == pytest.approx(d)
    assert ci.contains(d) and ci.low > 0
    sd = np.std(a.astype(float) - z.astype(float))
    expected = 2 * 1.959964 * sd / np.sqrt(n)
    assert (ci.high - ci.low) == pytest.approx(expected, rel=0.15)
    # symmetric-ish around the estimate
    assert abs((ci.high - ci.estimate) - (ci.estimate - ci.low)) < 0.2 * (ci.high - ci.low)


def test_bootstrap_is_deterministic_for_a_seed():
    a, z = paired(50, 30, both=900, neither=20)
    one = paired_bootstrap_ci(a, z, samples=500, alpha=0.05, seed=11)
    assert one == paired_bootstrap_ci(a.tolist(), z.tolist(), samples=500, alpha=0.05, seed=11)
    assert one != paired_bootstrap_ci(a, z, samples=500, alpha=0.05, seed=12)


def test_bootstrap_of_identical_models_is_a_point():
    a, _ = paired(0, 0, both=300, neither=100)
    assert paired_bootstrap_ci(a, a, samples=200, alpha=0.05, seed=0) == Interval(0.0, 0.0, 0.0, 0.95)


@pytest.mark.parametrize(
    ("a", "z", "kwargs"),
    [
        ([True, False], [True], {}),
        ([], [], {}),
        ([True], [False], {"samples": 0}),
        ([True], [False], {"alpha": 0.0}),
    ],
    ids=["length-mismatch", "no-rows", "no-samples", "bad-alpha"],
)
def test_bootstrap_rejects_bad_input(a, z, kwargs):
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, z, **{"samples": 10, "alpha": 0.05, "seed": 0, **kwargs})


def test_mcnemar_rejects_unpaired_rows():
    with pytest.raises(ValueError, match="same rows"):
        mcnemar([True, False], [True])


def test_recall_drops():
    labels = ["neg", "neu", "pos"]
    truth = ["neg"] * 10 + ["neu"] * 10 + ["pos"] * 10
    champion = compute_metrics(truth, truth[:8] + ["pos"] * 2 + truth[10:], labels, "champion")
    # challenger: fixes neg entirely, loses 3 of neu, one of pos
    challenger_pred = truth[:10] + ["neg"] * 3 + truth[13:20] + ["neu"] + truth[21:]
    challenger = compute_metrics(truth, challenger_pred, labels, "challenger")
    drops = recall_drops(challenger, champion)
    assert list(drops) == labels
    assert drops["neg"] == pytest.approx(-0.2)  # gain: 0.8 -> 1.0
    assert drops["neu"] == pytest.approx(0.3)  # 1.0 -> 0.7
    assert drops["pos"] == pytest.approx(0.1)  # 1.0 -> 0.9
