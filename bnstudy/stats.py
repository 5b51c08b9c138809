"""Statistics over seeds: means with Student's t confidence intervals, the decision rule and the power rule."""
import dataclasses
import functools
import math

import numpy as np


@functools.lru_cache(maxsize=None)  # the power rule asks for many degrees of freedom, each once
def t_quantile(p, dof):
    """The p-quantile of Student's t with `dof` degrees of freedom (bisection on a numerically integrated CDF)."""
    scale = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def cdf(x):  # 0.5 + integral of the density from 0 to x, Simpson's rule
        f = scale * (1 + np.linspace(0, x, 2001) ** 2 / dof) ** (-(dof + 1) / 2)
        return 0.5 + (x / 6000) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    lo, hi = 0.0, 100.0
    for _ in range(50):
        lo, hi = ((lo + hi) / 2, hi) if cdf((lo + hi) / 2) < p else (lo, (lo + hi) / 2)
    return (lo + hi) / 2


def mean_ci(values, axis=0, level=0.95):
    """Mean over `axis` and the half-width of its `level` confidence interval (Student's t)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    half = t_quantile(0.5 + level / 2, n - 1) * values.std(axis, ddof=1) / math.sqrt(n)
    return values.mean(axis), half


def fmt_ci(values, axis=0, digits=1):
    """'mean ± half-width of the 95 % CI' as text."""
    mean, half = mean_ci(values, axis)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_ratio(ratios):
    """Paired ratios as their geometric mean and its 95 % CI (the CI of the mean log ratio), e.g. '0.42× (0.35–0.51)'."""
    mean, half = mean_ci(np.log10(ratios))
    return f"{10 ** mean:.2g}× ({10 ** (mean - half):.2g}–{10 ** (mean + half):.2g})"


# ---------------------------------------------------------------------------------------------------------------
# The decision rule. Every verdict of the study is written by `decide`, from one declared primary contrast.

OUTCOMES = ("holds", "no effect that matters", "the opposite holds", "not resolved")


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A claim's primary contrast, declared before any run.

    `what`: the per-seed quantity (a paired difference, or a paired ratio when `ratio`); `direction`: +1 if the claim
    predicts it above 0 (above 1 for a ratio), -1 below; `margin`: the smallest effect that matters, in the
    contrast's units (for a ratio the factor, e.g. 1.25); `why`: the reason for that margin. Ratios are decided on
    their logs, so their estimate is a geometric mean.
    """
    what: str
    direction: int
    margin: float
    why: str
    ratio: bool = False
    unit: str = "points"

    def __post_init__(self):
        if self.direction not in (1, -1) or not self.margin > (1 if self.ratio else 0):
            raise ValueError("direction is +1 or -1; a margin is > 0 (a ratio's > 1)")

    @property
    def edge(self):
        """The margin on the scale the rule works on (log10 for ratios)."""
        return math.log10(self.margin) if self.ratio else self.margin


@dataclasses.dataclass(frozen=True)
class Decision:
    """What `decide` found: the outcome, the estimate and its 95 % CI (back on the contrast's scale), the seeds."""
    outcome: str
    estimate: float
    low: float
    high: float
    n: int
    seeds_needed: int  # reporting seeds at which the CI's half-width would be half the distance to the nearest edge
    contrast: Contrast
    values: tuple = ()  # the per-seed values it was decided on, so that anyone can decide again

    def text(self, digits=1, short=False):
        """'+1.2 [+0.7, +1.7] points, 12 seeds' or '1.9× [1.6×, 2.3×], 12 seeds'; short: without unit and seeds."""
        if self.contrast.ratio:
            interval = f"{self.estimate:.3g}× [{self.low:.3g}×, {self.high:.3g}×]"
        else:
            interval = f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]" \
                       + ("" if short else f" {self.contrast.unit}")
        return interval if short else f"{interval}, {self.n} seeds"

    @property
    def margin_text(self):
        c = self.contrast
        unit = c.unit[:-1] if c.margin == 1 and c.unit.endswith("s") else c.unit   # 1 point, 2 points
        return f"{c.margin:g}×" if c.ratio else f"{c.margin:g} {unit}"

    @property
    def enough_seeds(self):
        return self.n >= self.seeds_needed


def _on_scale(values, contrast):
    values = np.asarray(values, dtype=float).ravel()
    if contrast.ratio:
        if (values <= 0).any() or not np.isfinite(values).all():
            raise ValueError(f"{contrast.what}: ratios must be finite and positive")
        return np.log10(values)
    if not np.isfinite(values).all():
        raise ValueError(f"{contrast.what}: differences must be finite")
    return values


def seeds_needed(values, contrast, level=0.95):
    """Seeds at which the CI's half-width is half the distance from the estimate to the nearest margin edge.

    That is the power rule of the study: with it, another seed set most likely lands on the same side of every
    edge. The spread is the sample's; an estimate on an edge needs more seeds than any budget (returns 10**6).
    """
    x = _on_scale(values, contrast)
    mean, sd = x.mean(), x.std(ddof=1)
    distance = min(abs(mean - e) for e in (-contrast.edge, contrast.edge))
    if distance < 1e-12:
        return 10 ** 6
    if sd == 0:
        return 2
    n = 2
    while n < 10 ** 6 and t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n) > distance / 2:
        n = n + 1 if n < 100 else int(n * 1.1)   # above 100 in steps of 10 %: rounded up by at most that
    return min(n, 10 ** 6)


def decide(values, contrast, level=0.95):
    """The study's one decision rule, on per-seed values of a declared primary contrast.

    holds: the CI lies beyond the margin in the claimed direction; no effect that matters: the CI lies within
    ± the margin; the opposite holds: beyond the margin the other way; not resolved: anything else.
    """
    x = _on_scale(values, contrast)
    if len(x) < 2:
        raise ValueError("a decision needs at least two seeds")
    mean, half = mean_ci(x, level=level)
    low, high = mean - half, mean + half
    lo, hi = sorted((contrast.direction * low, contrast.direction * high))   # claimed direction is positive
    edge = contrast.edge
    outcome = ("holds" if lo > edge else "the opposite holds" if hi < -edge
               else "no effect that matters" if -edge < lo and hi < edge else "not resolved")
    back = (lambda v: 10 ** v) if contrast.ratio else (lambda v: v)
    return Decision(outcome, float(back(mean)), float(back(low)), float(back(high)), len(x),
                    seeds_needed(values, contrast, level), contrast,
                    tuple(float(v) for v in np.asarray(values, dtype=float).ravel()))


def plan_seeds(tuning_values, contrast, minimum=10, maximum=30):
    """Reporting seeds for a contrast from its spread on the tuning seeds: the power rule, within [minimum, maximum]."""
    return int(min(maximum, max(minimum, seeds_needed(tuning_values, contrast))))
