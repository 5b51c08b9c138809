"""Statistics over seeds and test images: means with Student's t confidence intervals (Satterthwaite's degrees of
freedom where the test images' sampling adds to the seeds'), the decision rule, the power rule, and how often
another seed set would reach the same verdict."""
import dataclasses
import functools
import math

import numpy as np


@functools.lru_cache(maxsize=None)  # the power rule asks for many degrees of freedom, each once
def signed(x, digits=1):
    """x with its sign, '+0.0' for anything that rounds to zero (never '-0.0')."""
    text = f"{x:+.{digits}f}"
    return text.replace("-", "+") if float(text) == 0 else text


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


# ---------------------------------------------------------------------------------------------------------------
# Seeds × test images. A test accuracy is a mean over one sample of test images as well as over training seeds:
# another draw of 10,000 images from the same distribution would move every model's accuracy, partly in step. With
# per-image correctness on every seed, the two-way random-effects model y[s, i] = μ + a_s + b_i + e_si gives
#   Var(grand mean) = σ_a² / n_s + σ_b² / n_i + σ_e² / (n_s n_i) = (MS_seeds + MS_images − MS_residual) / (n_s n_i)
# in the mean squares of the seeds × images table (no replication), and Satterthwaite's approximation gives the
# degrees of freedom of that sum. The seed part alone, MS_seeds / (n_s n_i), is the variance of the mean of the
# per-seed values: what a CI over seeds already has. So the images add (MS_images − MS_residual) / (n_s n_i), set
# to 0 when negative (σ_b² ≥ 0).

@dataclasses.dataclass(frozen=True)
class ImageSampling:
    """What the test images' sampling adds to a mean over seeds: the mean squares of images and of the residual of
    a seeds × images table, its numbers of images and of seeds (the seeds' own part comes from the per-seed values)."""
    ms_images: float
    ms_residual: float
    n_images: int
    n_seeds: int

    @property
    def variance(self):
        """(MS_images − MS_residual) / (n_s n_i), at least 0: the estimate of σ_b² / n_i, what the images add to the
        variance of a mean over any number of seeds on these images."""
        return max(self.ms_images - self.ms_residual, 0.0) / (self.n_seeds * self.n_images)

    def dof(self, seed_variance, n_seeds):
        """Satterthwaite's degrees of freedom of seed_variance + self.variance, where seed_variance is s² / n over
        n_seeds per-seed values ((Σ c_k MS_k)² over Σ (c_k MS_k)² / df_k); n_seeds − 1 when the images add
        nothing. On the table's own seeds this is the dof of MS_seeds + MS_images − MS_residual. Takes arrays."""
        seed_variance, n_i = np.asarray(seed_variance, dtype=float), self.n_images
        if self.variance == 0.0:
            return np.full(seed_variance.shape, n_seeds - 1.0)
        c = 1.0 / (self.n_seeds * n_i)
        denominator = (seed_variance ** 2 / (n_seeds - 1) + (c * self.ms_images) ** 2 / (n_i - 1)
                       + (c * self.ms_residual) ** 2 / ((self.n_seeds - 1) * (n_i - 1)))
        return (seed_variance + self.variance) ** 2 / denominator

    def variance_and_dof(self, per_seed):
        """The variance of the mean of per-seed values on these images, and its degrees of freedom."""
        per_seed = np.asarray(per_seed, dtype=float).ravel()
        seed_variance = per_seed.var(ddof=1) / len(per_seed)
        return seed_variance + self.variance, float(self.dof(seed_variance, len(per_seed)))


def per_image(values):
    """A contrast measured on every (seed, test image), values [seeds, images]: its per-seed means and the
    ImageSampling that the CI adds to them. For accuracy, values are per-image correctness (or its paired
    difference) in points, 100 × {0, 1} (or {−1, 0, 1})."""
    y = np.asarray(values, dtype=float)
    if y.ndim != 2 or min(y.shape) < 2:
        raise ValueError("per-image values are [seeds, images], at least 2 of each")
    return from_margins(y.mean(1), y.mean(0), ((y - y.mean()) ** 2).sum())


def from_margins(seed_means, image_means, ss_total):
    """`per_image` from what it reads of the table: its per-seed means, per-image means and total sum of squares
    about the grand mean (so that a simulation can draw these three instead of whole tables)."""
    seed_means, image_means = np.asarray(seed_means, dtype=float), np.asarray(image_means, dtype=float)
    n_s, n_i = len(seed_means), len(image_means)
    grand = seed_means.mean()
    ss_seeds = n_i * ((seed_means - grand) ** 2).sum()
    ss_images = n_s * ((image_means - grand) ** 2).sum()
    ss_residual = max(ss_total - ss_seeds - ss_images, 0.0)
    return seed_means, ImageSampling(ss_images / (n_i - 1), ss_residual / ((n_s - 1) * (n_i - 1)), n_i, n_s)


def whole_dof(dof):
    """Satterthwaite's dof rounded down (a slightly wider CI, and few distinct t quantiles to compute), within
    1-10,000 (above 10,000 dof, t is the normal to 4 digits). Takes arrays too."""
    return np.clip(np.floor(dof), 1, 10 ** 4)


def mean_ci(values, axis=0, level=0.95, images=None):
    """Mean over `axis` and the half-width of its `level` confidence interval: Student's t over the seeds, or, with
    `images` (an ImageSampling, for 1-d per-seed values), over seeds and test images with Satterthwaite's dof."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    if images is None:
        half = t_quantile(0.5 + level / 2, n - 1) * values.std(axis, ddof=1) / math.sqrt(n)
        return values.mean(axis), half
    if values.ndim != 1:
        raise ValueError("a CI over seeds and images takes one value per seed")
    variance, dof = images.variance_and_dof(values)
    quantile = t_quantile(0.5 + level / 2, int(whole_dof(dof)))
    return values.mean(), quantile * math.sqrt(variance)


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

OUTCOMES = ("holds", "no effect that matters", "the opposite holds", "not resolved", "needs a finer measurement")
FINER = OUTCOMES[4]   # a zero-width CI (every seed gave the same value): it decides nothing, and more seeds will not help


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
    images: ImageSampling = None   # with the values, what the test images' sampling added to the CI (None: seeds only)

    def text(self, digits=1, short=False):
        """'+1.2 [+0.7, +1.7] points, 12 seeds' or '1.9× [1.6×, 2.3×], 12 seeds'; short: without unit and seeds.

        A CI end that would round onto a margin edge it does not reach gets more digits (up to two more), so that an
        undecided CI never reads as if it ended on the edge: −0.96, not −1.0, against a 1-point margin."""
        c = self.contrast
        edges = (c.margin, 1 / c.margin) if c.ratio else (c.margin, -c.margin)
        show = (lambda x, d: f"{x:.{d + 2}g}") if c.ratio else (lambda x, d: signed(x, d))
        for d in range(digits, digits + 3):
            if not any(show(x, d) == show(e, d) and x != e for x in (self.low, self.high) for e in edges):
                break
        if c.ratio:
            interval = f"{show(self.estimate, d)}× [{show(self.low, d)}×, {show(self.high, d)}×]"
        else:
            interval = f"{show(self.estimate, d)} [{show(self.low, d)}, {show(self.high, d)}]" \
                       + ("" if short else f" {c.unit}")
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


def _image_variance(images):
    """The part of the grand mean's variance that the test images add; it does not shrink with more seeds."""
    return 0.0 if images is None else images.variance


def seeds_needed(values, contrast, level=0.95, images=None):
    """Seeds at which the CI's half-width is half the distance from the estimate to the nearest margin edge.

    That is the power rule of the study: with it, another seed set most likely lands on the same side of every
    edge. The spread is the sample's; an estimate on an edge, or one that the test images' sampling alone keeps
    that close, needs more seeds than any budget (returns 10**6).
    """
    x = _on_scale(values, contrast)
    mean, sd = x.mean(), x.std(ddof=1)
    distance = min(abs(mean - e) for e in (-contrast.edge, contrast.edge))
    fixed = _image_variance(images)
    if distance < 1e-12 or t_quantile(0.5 + level / 2, 10 ** 4) * math.sqrt(fixed) > distance / 2:
        return 10 ** 6
    if sd == 0 and fixed == 0:
        return 2
    n = 2
    while n < 10 ** 6 and t_quantile(0.5 + level / 2, n - 1) * math.sqrt(sd ** 2 / n + fixed) > distance / 2:
        n = n + 1 if n < 100 else int(n * 1.1)   # above 100 in steps of 10 %: rounded up by at most that
    return min(n, 10 ** 6)


def decide(values, contrast, level=0.95, images=None):
    """The study's one decision rule, on per-seed values of a declared primary contrast.

    holds: the CI lies beyond the margin in the claimed direction; no effect that matters: the CI lies within
    ± the margin; the opposite holds: beyond the margin the other way; not resolved: anything else; a CI of zero
    width (every seed the same value, e.g. a ratio read off a grid) needs a finer measurement. With `images`
    (from `per_image`), the CI covers the sampling of the test images as well as the seeds.
    """
    x = _on_scale(values, contrast)
    if len(x) < 2:
        raise ValueError("a decision needs at least two seeds")
    if images is not None and contrast.ratio:
        raise ValueError("a ratio is decided over seeds only (its per-image parts do not add)")
    mean, half = mean_ci(x, level=level, images=images)
    low, high = mean - half, mean + half
    lo, hi = sorted((contrast.direction * low, contrast.direction * high))   # claimed direction is positive
    edge = contrast.edge
    outcome = (FINER if half == 0 else "holds" if lo > edge else "the opposite holds" if hi < -edge
               else "no effect that matters" if -edge < lo and hi < edge else "not resolved")
    back = (lambda v: 10 ** v) if contrast.ratio else (lambda v: v)
    return Decision(outcome, float(back(mean)), float(back(low)), float(back(high)), len(x),
                    seeds_needed(values, contrast, level, images), contrast,
                    tuple(float(v) for v in np.asarray(values, dtype=float).ravel()), images)


def plan_seeds(tuning_values, contrast, minimum=10, maximum=30):
    """Reporting seeds for a contrast from its spread on the tuning seeds: the power rule, within [minimum, maximum]."""
    return int(min(maximum, max(minimum, seeds_needed(tuning_values, contrast))))


# ---------------------------------------------------------------------------------------------------------------
# Beyond one verdict: would another seed set agree, and does the verdict survive the other conditions run for it?

DECIDED = OUTCOMES[:3]   # "not resolved" and a zero-width CI decide nothing: they never make a row depend on a condition


def _outcome(lo, hi, edge):
    """The decision rule on a CI [lo, hi] already turned so that the claimed direction is positive (arrays too)."""
    return np.where(lo > edge, 0, np.where(hi < -edge, 2, np.where((-edge < lo) & (hi < edge), 1, 3)))


def replication_outcomes(decision, draws=4000, seed=0, level=0.95):
    """How often another set of as many reporting seeds (on the same test images) would reach each outcome:
    {outcome: probability}.

    A predictive simulation, so that the true mean is uncertain too: the seeds' SD σ and mean μ are drawn from their
    posterior given the per-seed values (flat prior on μ and log σ: σ² = (n−1)s²/χ²(n−1), μ ~ N(x̄, σ²/n)); a new
    set's mean and SD are drawn given them, and its CI (with the same test-image part) is decided by the same rule.
    """
    c = decision.contrast
    if decision.outcome == FINER:   # no spread: another seed set of this measurement gives the same zero-width CI
        return {o: float(o == FINER) for o in OUTCOMES}
    x = _on_scale(decision.values, c)
    n, rng = len(x), np.random.default_rng(seed)
    sigma2 = (n - 1) * x.var(ddof=1) / rng.chisquare(n - 1, draws)
    mu = x.mean() + np.sqrt(sigma2 / n) * rng.standard_normal(draws)
    new_mean = mu + np.sqrt(sigma2 / n) * rng.standard_normal(draws)
    new_var = sigma2 * rng.chisquare(n - 1, draws) / (n - 1)   # the new set's sample variance
    fixed = _image_variance(decision.images)
    if decision.images is None:
        quantile = np.full(draws, t_quantile(0.5 + level / 2, n - 1))
    else:   # each draw's Satterthwaite dof, as in mean_ci
        dofs = whole_dof(decision.images.dof(new_var / n, n)).astype(int)
        table = {d: t_quantile(0.5 + level / 2, d) for d in set(dofs)}
        quantile = np.array([table[d] for d in dofs])
    half = quantile * np.sqrt(new_var / n + fixed)
    lo, hi = np.sort(c.direction * np.stack([new_mean - half, new_mean + half]), axis=0)
    counts = np.bincount(_outcome(lo, hi, c.edge), minlength=len(OUTCOMES))   # (half > 0 in every draw)
    return dict(zip(OUTCOMES, (counts / draws).tolist()))


def replication_probability(decision, draws=4000, seed=0, level=0.95):
    """The chance that another set of as many reporting seeds reaches the same outcome (`replication_outcomes`)."""
    return replication_outcomes(decision, draws, seed, level)[decision.outcome]


def chance_disagreements(rows, draws=4000):
    """How many sensitivity rows would read *depends on* by chance alone: if no condition mattered, each would be
    another seed set of its primary, and differ from it with the predictive probability of a decided other outcome.
    `rows` is [(primary Decision, number of sensitivity conditions)]. Conditions that share the primary's seeds
    differ less often than this, so it is an upper estimate for them."""
    total = 0.0
    for primary, n_conditions in rows:
        if primary.outcome in DECIDED:
            p = replication_outcomes(primary, draws)
            total += n_conditions * sum(p[o] for o in DECIDED if o != primary.outcome)
    return total


def planned_seeds(first_values, contrast, level=0.95, maximum=30, images=None):
    """The sequential design of the reporting seeds: the first ones (10) estimate the SD; n is the smallest number
    at which the CI's half-width is at most half the margin, capped at `maximum`, and the row is decided on all n.
    The images' part of the variance does not shrink with n: where it alone is wider than the target, n is the cap
    (the CI as narrow as seeds can make it)."""
    x = _on_scale(first_values, contrast)
    if len(x) < 2:
        raise ValueError("the sequential design needs at least two first values")
    sd, fixed, target = x.std(ddof=1), _image_variance(images), contrast.edge / 2
    n = len(x)
    while n < maximum and t_quantile(0.5 + level / 2, n - 1) * math.sqrt(sd ** 2 / n + fixed) > target:
        n += 1
    return n


def at_other_margins(decision, factors=(0.5, 2.0), level=0.95):
    """The outcome the same values would get at other margins ({factor: outcome}; for a ratio the factor scales the
    log margin): descriptive, to show how much a verdict leans on the margin chosen."""
    c = decision.contrast
    return {f: decide(decision.values, dataclasses.replace(c, margin=c.margin ** f if c.ratio else c.margin * f),
                      level, decision.images).outcome for f in factors}


@dataclasses.dataclass(frozen=True)
class Robustness:
    """How a row's primary verdict fares under its sensitivity conditions. `reads`: "robust" (at least one condition
    decided, and every decided one agrees), "depends on" (the conditions in `on`, whose decided outcome differs from
    the primary's), "no condition decided", or "primary not decided"; `decided` of `conditions` were decided."""
    reads: str
    on: tuple = ()
    decided: int = 0
    conditions: int = 0

    def text(self):
        if self.on:
            return f"depends on {', '.join(self.on)}"
        if self.reads == "robust":
            return f"robust ({self.decided} of {self.conditions} conditions decided, all agree)"
        if self.conditions == 0:
            return "no other condition run"
        return self.reads


def robustness(primary, sensitivity):
    """Robustness of a primary Decision against {condition: Decision}; an undecided outcome never differs."""
    decided = [name for name, d in sensitivity.items() if d.outcome in DECIDED]
    if primary.outcome not in DECIDED:
        return Robustness("primary not decided", (), len(decided), len(sensitivity))
    on = tuple(name for name in decided if sensitivity[name].outcome != primary.outcome)
    reads = "depends on" if on else "robust" if decided else "no condition decided"
    return Robustness(reads, on, len(decided), len(sensitivity))
