"""Statistics over seeds: means with Student's t confidence intervals, paired differences and log ratios."""
import functools
import math

import numpy as np


@functools.lru_cache(maxsize=None)  # a few (p, dof) pairs serve every CI of the run, and each is slow to compute
def t_quantile(p, dof):
    """The p-quantile of Student's t with `dof` degrees of freedom (bisection on a numerically integrated CDF)."""
    density = lambda t: math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)  # noqa: E731
                                 - (dof + 1) / 2 * math.log1p(t * t / dof)) / math.sqrt(dof * math.pi)
    def cdf(x):  # 0.5 + integral from 0 to x, Simpson's rule
        t = np.linspace(0, x, 2001)
        f = np.array([density(v) for v in t])
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


def ci_bounds(values):
    """Lower and upper end of the 95 % confidence interval of the mean."""
    mean, half = mean_ci(values)
    return mean - half, mean + half


def direction(values):
    """'ahead' if the whole 95 % CI of the mean is above 0, 'behind' if below, else 'not resolved'."""
    low, high = ci_bounds(values)
    return "ahead" if low > 0 else "behind" if high < 0 else "not resolved"


def fmt_ci(values, axis=0, digits=1):
    """'mean ± half-width of the 95 % CI' as text."""
    mean, half = mean_ci(values, axis)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_ratio(ratios):
    """Paired ratios as their geometric mean and its 95 % CI (the CI of the mean log ratio), e.g. '0.42× (0.35–0.51)'."""
    mean, half = mean_ci(np.log10(ratios))
    return f"{10 ** mean:.2g}× ({10 ** (mean - half):.2g}–{10 ** (mean + half):.2g})"
