"""Uncertainty that covers what varies: CIs over seeds and test images (their coverage on synthetic crossed data),
the replication probability, robust / depends-on, and the finding sentences generated from decisions."""
import itertools

import numpy as np
import pytest

from bnstudy.results import finding
from bnstudy.stats import (OUTCOMES, Contrast, ImageSampling, at_other_margins, chance_disagreements, decide,
                           from_margins, mean_ci, per_image, planned_seeds, replication_outcomes,
                           replication_probability, robustness)

POINTS = Contrast("A − B (points)", direction=+1, margin=1.0, why="a point of accuracy")
N_IMAGES = 10_000


def crossed_margins(rng, n_seeds, ratio, reps, n_images=N_IMAGES):
    """What `per_image` reads of `reps` synthetic tables y = a_s + b_i + e_si (true mean 0, Gaussian), drawn
    exactly in distribution without the tables: per-seed means, per-image means and the total sum of squares.

    `ratio` is the images' part of the grand mean's variance over the seeds': (σ_b² / n_i) / (σ_a² / n_s). The
    residual adds half of σ_a² to each per-seed mean (σ_e² / n_i = σ_a² / 2), about as in paired per-image
    correctness of two classifiers on 10,000 images, so against the per-seed values' whole variance the images'
    part is ratio / 1.5. For iid Gaussian e, its grand mean, its centred row means, its
    centred column means and its interaction sum of squares are independent, with the laws drawn below."""
    sigma_a2, n = 1.0, n_seeds * n_images
    sigma_b2, sigma_e2 = ratio * sigma_a2 * n_images / n_seeds, 0.5 * sigma_a2 * n_images
    for _ in range(reps):
        a, b = np.sqrt(sigma_a2) * rng.standard_normal(n_seeds), np.sqrt(sigma_b2) * rng.standard_normal(n_images)
        e_grand = np.sqrt(sigma_e2 / n) * rng.standard_normal()
        e_rows = np.sqrt(sigma_e2 / n_images) * rng.standard_normal(n_seeds)
        e_cols = np.sqrt(sigma_e2 / n_seeds) * rng.standard_normal(n_images)
        e_rows, e_cols = e_rows - e_rows.mean(), e_cols - e_cols.mean()
        seed_means = a + b.mean() + e_grand + e_rows
        image_means = a.mean() + b + e_grand + e_cols
        grand = seed_means.mean()
        ss_total = (n_images * ((seed_means - grand) ** 2).sum() + n_seeds * ((image_means - grand) ** 2).sum()
                    + sigma_e2 * rng.chisquare((n_seeds - 1) * (n_images - 1)))
        yield seed_means, image_means, ss_total


def test_crossed_margins_are_what_whole_tables_give():
    """The shortcut draws what whole tables with the same variances give: the seeds', the images' and the
    residual mean squares agree in mean over 2,000 small tables (5 seeds × 40 images) of each kind."""
    rng = np.random.default_rng(2)
    # crossed_margins at 5 seeds, 40 images, ratio 0.5: σ_a² = 1, σ_b² = 0.5 · 40 / 5 = 4, σ_e² = 0.5 · 40 = 20
    tables = (rng.standard_normal((2000, 5, 1)) + 2 * rng.standard_normal((2000, 1, 40))
              + np.sqrt(20) * rng.standard_normal((2000, 5, 40)))
    kinds = {"tables": [per_image(y) for y in tables],
             "shortcut": [from_margins(*m) for m in crossed_margins(rng, 5, 0.5, reps=2000, n_images=40)]}
    expected = {"seeds": 20 + 40 * 1, "images": 20 + 5 * 4, "residual": 20,   # E[MS] of the two-way model
                "grand mean": 1 / 5 + 4 / 40 + 20 / 200}                  # Var: σ_a²/n_s + σ_b²/n_i + σ_e²/(n_s n_i)
    for kind, results in kinds.items():
        got = {"seeds": np.mean([40 * per_seed.var(ddof=1) for per_seed, _ in results]),
               "images": np.mean([images.ms_images for _, images in results]),
               "residual": np.mean([images.ms_residual for _, images in results]),
               "grand mean": np.var([per_seed.mean() for per_seed, _ in results])}   # true mean 0
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=0.1 if key == "grand mean" else 0.05), (kind, key)


@pytest.mark.parametrize("n_seeds, ratio", list(itertools.product((10, 30), (0.0, 0.25, 1.0, 4.0))))
def test_the_ci_over_seeds_and_images_covers_95_percent(n_seeds, ratio):
    """4,000 synthetic studies per case, 10,000 test images each: the 95 % CI covers the true mean in 93–97 % of
    them (binomial SD 0.35 %); the CI over seeds alone, which ignores the images, covers far less once they matter.
    At ratio 0 the images add nothing, and the estimate of their part is often truncated at 0."""
    rng = np.random.default_rng(1000 * n_seeds + int(4 * ratio))
    covered, seeds_only, reps = 0, 0, 4000
    for margins in crossed_margins(rng, n_seeds, ratio, reps):
        per_seed, images = from_margins(*margins)
        mean, half = mean_ci(per_seed, images=images)
        covered += abs(mean) <= half
        seeds_only += abs(mean) <= mean_ci(per_seed)[1]
    assert 0.93 * reps <= covered <= 0.97 * reps, covered / reps
    if ratio >= 1:
        assert seeds_only < 0.9 * reps, seeds_only / reps


def test_coverage_holds_for_per_image_correctness_too():
    """Binary correctness of two classifiers (logistic in an image's difficulty and a seed's skill), paired on
    seeds and images: the CI of the accuracy difference covers the true difference in 92–98 % of 400 studies
    (binomial SD 1.1 %), where a CI over seeds alone covers less than 90 %. Seeds differ little in skill here, so
    the images matter. The true difference is computed from the generating probabilities of many images."""
    rng = np.random.default_rng(7)
    n_seeds, n_images, covered, seeds_only = 10, 5_000, 0, 0
    shift, skill_sd = 0.15, 0.005                    # classifier A is this much more skilled, in logits

    def draw(size):   # image difficulty (shared, plus a part each model finds harder) and seed skill, in logits
        return (rng.normal(0, 2, size) + rng.normal(0, 1.0, (2, size)),
                1.5 + skill_sd * rng.standard_normal((2, size)))
    difficulty, skill = draw(2_000_000)               # the population the test set and the seeds are samples of
    p = 1 / (1 + np.exp(-(skill + np.array([[shift], [0.0]]) - difficulty)))
    true = 100 * (p[0] - p[1]).mean()                 # to about ±0.03 points
    for _ in range(400):
        difficulty = rng.normal(0, 2, n_images) + rng.normal(0, 1.0, (2, n_images))  # A and B find some images harder
        skill = 1.5 + skill_sd * rng.standard_normal((2, n_seeds))
        skill[0] += shift
        p = 1 / (1 + np.exp(-(skill[:, :, None] - difficulty[:, None, :])))
        correct = rng.random(p.shape) < p
        per_seed, images = per_image(100.0 * (correct[0].astype(float) - correct[1]))
        mean, half = mean_ci(per_seed, images=images)
        covered += abs(mean - true) <= half
        seeds_only += abs(mean - true) <= mean_ci(per_seed)[1]
    assert 368 <= covered <= 392, covered
    assert seeds_only < 360, seeds_only


def test_per_image_is_the_two_way_anova():
    """The mean squares against the textbook sums on a small table, and the per-seed means."""
    y = np.random.default_rng(3).normal(size=(4, 7)) + np.arange(7)
    per_seed, images = per_image(y)
    n_s, n_i = y.shape
    g = y.mean()
    rows, cols = y.mean(1), y.mean(0)
    ms_images = n_s * sum((c - g) ** 2 for c in cols) / (n_i - 1)
    ms_residual = sum((y[s, i] - rows[s] - cols[i] + g) ** 2 for s in range(n_s) for i in range(n_i)) / (
        (n_s - 1) * (n_i - 1))
    assert np.allclose(per_seed, rows)
    assert images.ms_images == pytest.approx(ms_images, rel=1e-12)
    assert images.ms_residual == pytest.approx(ms_residual, rel=1e-12)
    ms_seeds = n_i * rows.var(ddof=1)
    variance, dof = images.variance_and_dof(per_seed)
    assert variance == pytest.approx((ms_seeds + ms_images - ms_residual) / (n_s * n_i), rel=1e-12)
    expected = (ms_seeds + ms_images - ms_residual) ** 2 / (
        ms_seeds ** 2 / (n_s - 1) + ms_images ** 2 / (n_i - 1) + ms_residual ** 2 / ((n_s - 1) * (n_i - 1)))
    assert dof == pytest.approx(expected, rel=1e-12)


def test_images_that_add_nothing_leave_the_ci_over_seeds():
    """MS_images below MS_residual (no image effect in the sample): the CI is Student's t over seeds."""
    per_seed = np.array([1.0, 2.0, 3.0, 2.5])
    flat = ImageSampling(ms_images=0.5, ms_residual=0.6, n_images=1000, n_seeds=4)
    assert mean_ci(per_seed, images=flat) == pytest.approx(mean_ci(per_seed))
    wide = ImageSampling(ms_images=5000.0, ms_residual=0.6, n_images=1000, n_seeds=4)
    assert mean_ci(per_seed, images=wide)[1] > mean_ci(per_seed)[1]


def test_a_decision_with_images_can_be_made_again_from_what_it_keeps():
    rng = np.random.default_rng(5)
    y = 100.0 * (rng.random((12, 2000)) < rng.uniform(0.2, 0.95, 2000)) - 56.0   # images differ in difficulty
    per_seed, images = per_image(y)
    d = decide(per_seed, POINTS, images=images)
    again = decide(list(d.values), POINTS, images=ImageSampling(**vars(d.images)))
    assert (again.outcome, again.low, again.high) == (d.outcome, d.low, d.high)
    assert d.high - d.low > decide(per_seed, POINTS).high - decide(per_seed, POINTS).low
    ratio = Contrast("A / B", +1, 1.25, "", ratio=True, unit="×")
    with pytest.raises(ValueError, match="ratio"):
        decide(np.ones(12) * 2, ratio, images=images)


def sample(mean, sd, n=12, seed=0):
    z = np.random.default_rng(seed).standard_normal(n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def test_replication_probability_is_high_far_from_the_edges_and_a_coin_flip_on_one():
    far = decide(sample(5.0, 1.0), POINTS)
    assert far.outcome == "holds" and replication_probability(far) > 0.99
    near = decide(sample(1.0, 1.0, n=30), POINTS)        # the estimate sits on the edge: not resolved
    assert near.outcome == "not resolved" and replication_probability(near) > 0.5
    just = decide(sample(1.6, 1.0, n=10), POINTS)        # CI about [0.9, 2.3]... a near thing either way
    assert 0.05 < replication_probability(just) < 0.8
    assert replication_probability(just, seed=1) == pytest.approx(replication_probability(just, seed=2), abs=0.03)


def test_replication_probability_is_calibrated():
    """Over studies whose true effects spread across both sides of the edges (uniform in −1 to 4 points, seed SD 1),
    the mean predicted probability that a fresh seed set reaches the same outcome is how often one does, within
    0.04 over 3,000 pairs of seed sets (SE 0.008). It runs about 0.01-0.03 high here (the flat prior is not the
    uniform one), so a probability it gives is a slight overstatement. At one fixed true effect it need not match at
    all: it averages over what the truth could be."""
    rng = np.random.default_rng(11)
    predicted, replicated = [], []
    for truth in rng.uniform(-1.0, 4.0, 3000):
        first = decide(truth + rng.standard_normal(10), POINTS)
        second = decide(truth + rng.standard_normal(10), POINTS)
        predicted.append(replication_probability(first, draws=300))
        replicated.append(first.outcome == second.outcome)
    assert abs(np.mean(predicted) - np.mean(replicated)) < 0.04, (np.mean(predicted), np.mean(replicated))


def test_robust_or_depends_on_counts_only_decided_outcomes():
    primary = decide(sample(3.0, 1.0), POINTS)
    same = decide(sample(2.5, 1.0), POINTS)
    unresolved = decide(sample(1.0, 1.0), POINTS)
    none = decide(sample(0.0, 0.3), POINTS)
    assert robustness(primary, {"lr 0.1": same, "lr 0.3": unresolved}).text() == (
        "robust (1 of 2 conditions decided, all agree)")
    assert robustness(primary, {"lr 0.3": unresolved}).reads == "no condition decided"
    assert robustness(primary, {}).reads == "no condition decided"
    r = robustness(primary, {"lr 0.1": same, "lr 0.3": none})
    assert r.reads == "depends on" and r.on == ("lr 0.3",) and r.text() == "depends on lr 0.3"
    assert robustness(unresolved, {"lr 0.1": same}).reads == "primary not decided"


@pytest.mark.parametrize("mean, sd", [(3.0, 1.0), (0.0, 0.5), (-3.0, 1.0), (1.0, 1.0)])
def test_the_finding_is_generated_from_the_decision(mean, sd):
    d = decide(sample(mean, sd), POINTS)
    text = finding("A beats B", d)
    assert text.startswith(f"A beats B: *{d.outcome}* here.") and d.text() in text and "1 point" in text
    assert text.count(".") >= 2 and text.endswith(".")


def test_the_finding_names_the_condition_it_depends_on():
    outcomes_seen = set()
    primary = decide(sample(3.0, 1.0), POINTS)
    other = {"lr 0.3": decide(sample(0.0, 0.3), POINTS), "lr 0.03": decide(sample(2.8, 1.0), POINTS)}
    text = finding("A beats B", primary, robustness(primary, other), other)
    assert "depends on lr 0.3, where it reads *no effect that matters*" in text and "lr 0.03" not in text
    same = {"lr 0.03": other["lr 0.03"]}
    assert "robust" in finding("A beats B", primary, robustness(primary, same), same)
    for mean in (3.0, 0.0, -3.0, 1.0):
        outcomes_seen.add(decide(sample(mean, 1.0 if mean else 0.5), POINTS).outcome)
    flat = decide([2.0, 2.0, 2.0], POINTS)                      # every seed the same: a zero-width CI
    outcomes_seen.add(flat.outcome)
    assert outcomes_seen == set(OUTCOMES)
    assert "zero width and decides nothing" in finding("A beats B", flat, robustness(flat, {}), {})
    assert "no other condition was run" in finding("A beats B", flat, robustness(flat, {}), {})


def test_the_verdict_at_half_and_twice_the_margin():
    d = decide(sample(1.6, 0.5, n=20), POINTS)                  # CI about [1.37, 1.83]
    assert d.outcome == "holds"
    assert at_other_margins(d) == {0.5: "holds", 2.0: "no effect that matters"}   # within ± 2
    ratio = Contrast("A / B", +1, 1.25, "", ratio=True, unit="×")
    r = decide(np.exp(sample(np.log(1.2), 0.01, n=20)), ratio)  # about 1.2×: inside 1.25×, beyond 1.25 ** 0.5
    assert r.outcome == "no effect that matters" and at_other_margins(r)[0.5] == "holds"


def test_chance_disagreements_add_the_predictive_probability_of_another_decided_outcome():
    far = decide(sample(5.0, 1.0), POINTS)                   # holds beyond doubt: no chance disagreement
    assert chance_disagreements([(far, 3)]) < 0.01
    edge = decide(sample(1.0, 1.0, n=30), POINTS)            # not resolved: it cannot differ
    assert chance_disagreements([(edge, 2)]) == 0.0
    near = decide(sample(1.5, 1.0, n=30), POINTS)            # holds, but the CI nearly touches the edge
    p = replication_outcomes(near)
    assert near.outcome == "holds" and sum(p.values()) == pytest.approx(1.0)
    assert chance_disagreements([(near, 2), (far, 1)], draws=4000) == pytest.approx(
        2 * (p["no effect that matters"] + p["the opposite holds"]), abs=0.01)


def test_planned_seeds_reach_half_the_margin_or_the_cap():
    """From the first 10 values: the smallest n whose CI half-width is at most half the margin, at most 30."""
    from bnstudy.stats import t_quantile
    first = sample(2.0, 1.2, n=10)
    n = planned_seeds(first, POINTS)
    assert 10 < n < 30
    assert t_quantile(0.975, n - 1) * 1.2 / np.sqrt(n) <= 0.5 < t_quantile(0.975, n - 2) * 1.2 / np.sqrt(n - 1)
    assert planned_seeds(sample(2.0, 0.3, n=10), POINTS) == 10       # already narrow enough
    assert planned_seeds(sample(2.0, 5.0, n=10), POINTS) == 30       # capped
    # the images alone: (22,000 − 1,000) / (10 · 10,000) = 0.21, a half-width of 1.96 · 0.46 = 0.9 > 0.5 points
    images = ImageSampling(ms_images=22_000, ms_residual=1_000, n_images=10_000, n_seeds=10)
    assert planned_seeds(sample(2.0, 0.3, n=10), POINTS, images=images) == 30
    narrow = ImageSampling(ms_images=2_000, ms_residual=1_000, n_images=10_000, n_seeds=10)   # ±0.2 points
    assert 10 < planned_seeds(sample(2.0, 1.0, n=10), POINTS, images=narrow) < 30
    assert planned_seeds(sample(2.0, 1.0, n=10), POINTS, images=narrow) > planned_seeds(sample(2.0, 1.0, n=10), POINTS)
