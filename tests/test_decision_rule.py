"""The study's one decision rule (bnstudy.stats.decide), the power rule and the selection rule, on synthetic data."""
import numpy as np
import pytest

from bnstudy.protocol import one_se_pick
from bnstudy.stats import FINER, OUTCOMES, Contrast, decide, mean_ci, plan_seeds, seeds_needed, t_quantile

POINTS = Contrast("A − B (points)", direction=+1, margin=1.0, why="a point of accuracy")
FEWER = Contrast("steps A / steps B", direction=-1, margin=1.25, why="a quarter fewer steps", ratio=True, unit="×")


def sample(mean, sd, n=12, seed=0):
    """n values with exactly this mean and sample standard deviation."""
    z = np.random.default_rng(seed).standard_normal(n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


@pytest.mark.parametrize("mean, sd, outcome", [
    (3.0, 1.0, "holds"),                    # CI about [2.4, 3.6]: beyond +1
    (0.0, 0.5, "no effect that matters"),   # CI about [-0.3, 0.3]: inside ± 1
    (-3.0, 1.0, "the opposite holds"),      # beyond -1
    (1.0, 1.0, "not resolved"),             # straddles the edge at +1
    (0.0, 5.0, "not resolved"),             # straddles both edges
    (-1.2, 0.6, "not resolved"),            # straddles -1
])
def test_every_outcome_of_a_difference(mean, sd, outcome):
    d = decide(sample(mean, sd), POINTS)
    assert d.outcome == outcome
    assert d.low < d.estimate < d.high and d.n == 12 and abs(d.estimate - mean) < 1e-9


def test_direction_flips_holds_and_opposite():
    below = Contrast("A − B", direction=-1, margin=1.0, why="")
    assert decide(sample(-3, 1), below).outcome == "holds"
    assert decide(sample(3, 1), below).outcome == "the opposite holds"


@pytest.mark.parametrize("ratios, outcome", [
    (np.exp(sample(np.log(0.5), 0.1)), "holds"),                     # half the steps: beyond 1/1.25
    (np.exp(sample(0.0, 0.05)), "no effect that matters"),            # about 1: inside [0.8, 1.25]
    (np.exp(sample(np.log(2.0), 0.1)), "the opposite holds"),
    (np.exp(sample(np.log(0.8), 0.2)), "not resolved"),
])
def test_every_outcome_of_a_ratio_is_decided_on_logs(ratios, outcome):
    d = decide(ratios, FEWER)
    assert d.outcome == outcome
    geometric = np.exp(np.log(ratios).mean())
    assert abs(d.estimate - geometric) < 1e-9 * geometric            # a geometric mean, not an arithmetic one
    assert d.low < d.estimate < d.high and d.estimate == pytest.approx(np.sqrt(d.low * d.high))  # symmetric in logs


def test_a_ratio_is_decided_on_its_geometric_mean_not_its_arithmetic_one():
    ratios = np.array([0.5, 0.5, 0.5, 0.5, 4.0, 4.0, 4.0, 4.0] * 3)   # arithmetic mean 2.25, geometric mean 1.41
    more = Contrast("A / B", direction=+1, margin=1.5, why="", ratio=True, unit="×")
    assert ratios.mean() > 1.5 and decide(ratios, more).outcome == "not resolved"   # 2.25× would have held
    assert decide(ratios, more).estimate == pytest.approx(np.sqrt(2))


def test_the_ci_is_students_t_on_the_contrasts_scale():
    values = sample(2.0, 1.0, n=5)
    mean, half = mean_ci(values)
    d = decide(values, POINTS)
    assert (d.low, d.high) == pytest.approx((mean - half, mean + half))
    assert half == pytest.approx(2.776 * 1.0 / np.sqrt(5), rel=1e-3)


def test_edges_zero_spread_and_two_seeds():
    assert decide([2.0, 2.0, 2.0], POINTS).outcome == FINER                       # a zero-width CI decides nothing
    assert decide([1.0, 1.0, 1.0], POINTS).outcome == FINER
    on_edge = decide([0.9, 1.0, 1.1], POINTS)
    assert on_edge.outcome == "not resolved" and on_edge.seeds_needed == 10 ** 6  # on the edge: no budget resolves it
    assert decide([0.9, 1.1], POINTS).outcome == "not resolved"                  # n = 2, t = 12.7: wide
    assert decide([2.9, 3.1], POINTS).outcome == "holds"
    below = Contrast("A − B", direction=-1, margin=1.0, why="")
    assert decide(sample(0.0, 0.5), below).outcome == "no effect that matters"
    assert decide(sample(-1.0, 1.0), below).outcome == "not resolved"


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        decide([1.0], POINTS)
    with pytest.raises(ValueError):
        decide([1.0, np.nan, 2.0], POINTS)
    with pytest.raises(ValueError):
        decide([1.0, -0.5], FEWER)
    with pytest.raises(ValueError):
        Contrast("x", direction=0, margin=1, why="")
    with pytest.raises(ValueError):
        Contrast("x", direction=1, margin=0.9, why="", ratio=True)


def test_seeds_needed_is_the_power_rule():
    values = sample(2.0, 1.0, n=5)          # distance to the edge at 1: 1.0; half of it: 0.5
    n = seeds_needed(values, POINTS)
    assert t_quantile(0.975, n - 1) * 1.0 / np.sqrt(n) <= 0.5 < t_quantile(0.975, n - 2) * 1.0 / np.sqrt(n - 1)
    assert seeds_needed(sample(1.0, 1.0), POINTS) == 10 ** 6          # on the edge: no budget suffices
    assert seeds_needed(sample(5.0, 1.0), POINTS) < n                  # farther from the edge: fewer
    assert plan_seeds(sample(5.0, 1.0), POINTS) == 10                  # at least 10
    assert plan_seeds(sample(1.0, 1.0), POINTS) == 30                  # at most the cap
    near = seeds_needed(sample(1.05, 1.0), POINTS)                     # far above 100, still capped
    assert 1_000 < near <= 10 ** 6


def test_enough_seeds_predicts_replication():
    # With the seeds the rule asks for, fresh samples from the same population land on the same outcome.
    rng = np.random.default_rng(1)
    n = seeds_needed(sample(2.0, 1.5, n=50), POINTS)
    outcomes = {decide(2.0 + 1.5 * rng.standard_normal(n), POINTS).outcome for _ in range(200)}
    assert outcomes <= {"holds", "not resolved"}
    share = np.mean([decide(2.0 + 1.5 * rng.standard_normal(n), POINTS).outcome == "holds" for _ in range(400)])
    assert share > 0.9


def test_one_se_pick_prefers_the_smallest_on_a_plateau():
    plateau = np.array([[0.80, 0.81, 0.79], [0.875, 0.870, 0.880], [0.877, 0.873, 0.879], [0.876, 0.871, 0.881]])
    assert int(np.argmax(plateau.mean(1))) == 2 and one_se_pick(plateau) == 1
    clear = np.array([[0.5, 0.5, 0.5], [0.9, 0.91, 0.89], [0.7, 0.7, 0.7]])
    assert one_se_pick(clear) == 1
    assert one_se_pick(np.array([[np.nan, np.nan], [0.6, 0.62]])) == 1  # a diverged candidate never wins
    assert one_se_pick(np.array([[0.8], [0.9], [0.9]])) == 1            # one seed: no SE, the first of the best
    with pytest.raises(ValueError, match="finite"):
        one_se_pick(np.array([[np.nan, np.nan], [np.nan, np.nan]]))


