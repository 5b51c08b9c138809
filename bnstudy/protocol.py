"""The study's protocol: which seeds choose and which report, how a grid of runs is trained and read back, and how a
learning rate is chosen.

Tuning seeds choose every hyper-parameter on the validation split and never see the test set; reporting seeds train
at the chosen values and are read on the test set, never on the validation split. `Protocol` trains every pass of
the notebook, with a progress bar, and adds up the training it did (the model-epochs its passes return).
"""
import math
from dataclasses import dataclass, field

import numpy as np

from .data import without
from .engine import train_runs
from .models import Arch, Run
from .stats import decide, per_image, planned_seeds

BLOCK = 10_000        # the confirmatory seed policy: SEED owns [SEED·10,000, SEED·10,000 + 10,000)
BLOCK_TUNING = 5_000  # reporting seeds from the block's start, tuning seeds from its middle
DEVELOPMENT_SEED = 0  # its block holds every seed used before the registry, and every pilot and debugging run


def seed_block(seed, reporting, tuning):
    """The reporting and tuning seeds of SEED's own block: no other SEED shares any of them.

    Reporting seeds are SEED·10,000 + i, tuning seeds SEED·10,000 + 5,000 + i. SEED 0's block, 0-9,999, holds every
    seed the study used before its registry (SEED + i and SEED + 1,000 + i, at SEEDs up to 2,024): pilots and
    debugging use it, confirmatory runs other SEEDs."""
    if not 0 <= seed < 2 ** 31 // BLOCK:
        raise ValueError(f"SEED must be in 0-{2 ** 31 // BLOCK - 1:,} (its block must stay below 2**31)")
    if not (0 <= reporting <= BLOCK_TUNING and 0 <= tuning <= BLOCK - BLOCK_TUNING):
        raise ValueError(f"at most {BLOCK_TUNING:,} reporting and {BLOCK - BLOCK_TUNING:,} tuning seeds per block")
    start = seed * BLOCK
    return [start + i for i in range(reporting)], [start + BLOCK_TUNING + i for i in range(tuning)]


def cosine(progress):
    """The cosine schedule's lr factor at `progress` (the fraction of training done): 1 at the start, 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * progress))


def one_se_pick(scores):
    """Index of the smallest candidate whose mean score is within one standard error of the best mean.

    scores: [candidates, tuning seeds], higher is better, candidates in increasing order (e.g. learning rates).
    On a plateau of near-equal candidates the plain argmax moves with the seed set; this rule does not as easily.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    means = scores.mean(1)
    if not np.isfinite(means).any():
        raise ValueError("no candidate has a finite mean score (was a validation split given?)")
    best = int(np.argmax(means))
    se = scores[best].std(ddof=1) / math.sqrt(scores.shape[1]) if scores.shape[1] > 1 else 0.0
    return int(np.flatnonzero(means >= means[best] - se)[0])


def grid_runs(seeds, rates, arch=Arch(), **settings):
    """One Run per (seed, rate), seeds outermost: the runs of a seed share its batch order in the engine."""
    return [Run(seed, rate, arch=arch, **settings) for seed in seeds for rate in rates]


def rates_first(values, n_rates):
    """Per-run values of grid_runs (seed by seed, rates inside), reshaped from [seeds * rates, ...] to [rates, seeds, ...]."""
    return np.swapaxes(values.reshape(-1, n_rates, *values.shape[1:]), 0, 1)


def by_rate(history, n_rates):
    """A history of grid_runs, every metric as [rates, seeds, ...]."""
    return {m: rates_first(v, n_rates) if m != "curve_steps" else v for m, v in history.items()}


@dataclass
class Part:
    """The runs of one name in a pass: their history (rows in the order given), their trained models and checkpoints
    (StackedMLPs of those runs alone)."""
    runs: list
    history: dict
    models: object
    snapshots: dict = field(default_factory=dict)


def parts_of(trained, named_runs):
    """Split a pass trained on the concatenation of named_runs' lists back into one Part per name."""
    parts, start = {}, 0
    for name, runs in named_runs.items():
        stop = start + len(runs)
        rows = [p for p, i in enumerate(trained.models.order_of_runs) if start <= i < stop]
        history = {m: (v if m == "curve_steps" else v[start:stop]) for m, v in trained.history.items()}
        parts[name] = Part(runs, history, trained.models.snapshot(rows),
                           {step: s.snapshot(rows) for step, s in trained.snapshots.items()})
        start = stop
    return parts


class Protocol:
    """The seed policy and the passes of one run of the study (one SEED).

    SEED owns a block of seeds (`seed_block`): `tuning_seeds` choose, `reporting_seeds(n)` report; no other SEED
    shares either. `train` trains named lists of runs in one pass; `tune` trains named lr grids on the tuning
    seeds without the test split (a rule of `PICKS` then chooses from their sweeps); `report` trains on reporting
    seeds without the validation split. `model_epochs` adds up what every pass returned.
    """

    def __init__(self, seed, tuning_seeds, batch_size, progress=True):
        if tuning_seeds < 2:
            raise ValueError("the selection rule needs at least two tuning seeds")
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
        self.tuning_seeds = seed_block(seed, 0, tuning_seeds)[1]
        self.model_epochs = 0.0

    def reporting_seeds(self, n, start=0):
        """Reporting seeds start, ..., n − 1 of SEED's block (start > 0: the next ones of a sequential design)."""
        return seed_block(self.seed, n, 0)[0][start:]

    def count(self, trained):
        """Add a pass trained outside the protocol (the notebook's float64 engine check) to `model_epochs`."""
        self.model_epochs += trained.model_epochs
        return trained

    def train(self, description, named_runs, data, epochs, **options):
        """Train every run of named_runs ({name: [Run]}) in one pass; {name: Part}."""
        named_runs = {name: runs for name, runs in named_runs.items() if runs}
        runs = [run for group in named_runs.values() for run in group]
        if not runs:
            return {}
        options.setdefault("batch_size", self.batch_size)
        trained = train_runs(runs, data, epochs, progress=description if self.progress else None, **options)
        self.model_epochs += trained.model_epochs
        return parts_of(trained, named_runs)

    def tune(self, description, grids, data, epochs, **options):
        """Each grid ({name: (arch, rates, Run settings)}) on the tuning seeds, all in one pass, with the test split
        dropped: {name: sweep [rates, seeds, ...]} (validation accuracy and loss after the last epoch)."""
        named = {name: grid_runs(self.tuning_seeds, rates, arch, **settings)
                 for name, (arch, rates, settings) in grids.items()}
        options.setdefault("every_epoch", False)
        parts = self.train(description, named, without(data, "test"), epochs, evaluate=("val",), **options)
        return {name: by_rate(parts[name].history, len(grids[name][1])) for name in grids}

    def report(self, description, named_runs, data, epochs, **options):
        """Reporting runs, read on the test split; the validation split is dropped (it only chooses)."""
        options.setdefault("evaluate", ("test",))
        return self.train(description, named_runs, without(data, "val"), epochs, **options)


def argmax_pick(scores):
    """Index of the candidate with the best mean score (scores [candidates, tuning seeds]; NaN counts as worst)."""
    means = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf).mean(1)
    if not np.isfinite(means).any():
        raise ValueError("no candidate has a finite mean score")
    return int(np.argmax(means))


PICKS = {"argmax": argmax_pick, "one-SE": one_se_pick}   # the primary rule, and the sensitivity rule


def extend_grid(rates, means, drop, limits, step=10 ** 0.5):
    """The rates to add to a screened grid (one each side at most): above the top rate if some model's mean there
    is within `drop` points of its best and it did not fail; the same below the lowest rate; never past `limits`.

    means: {model: [rates] mean screen accuracy in points, NaN where it failed}."""
    add = []
    for end, beyond, inside in ((-1, rates[-1] * step, lambda r: r <= limits[1]),
                                (0, rates[0] / step, lambda r: r >= limits[0])):
        near = [np.isfinite(m[end]) and m[end] > np.nanmax(m) - drop for m in means.values()]
        if any(near) and inside(beyond):
            add.append(float(f"{beyond:.3g}"))   # half-decade rates as written: 10, 0.0003, ...
    return add


@dataclass
class Tuned:
    """What `tune_coarse_to_fine` returns: the screened rates, each model's screen [rates, tuning seeds] and its
    finalists' validation accuracy [finalists, tuning seeds] (points), and each rule's pick {rule: {model: lr}}."""
    rates: list
    screen: dict
    finalists: dict
    fine: dict
    pick: dict


def tune_coarse_to_fine(protocol, description, models, data, grid, screen_epochs, epochs, finalists, drop, limits,
                        fail_below, **options):
    """The lr grid's tuning for other regimes: a screen of `grid` after `screen_epochs` on the tuning seeds, extended
    by `extend_grid` (a mean below `fail_below` points counts as failed), then each model's best `finalists` rates
    at `epochs`, and each rule of PICKS on them. models: {name: (Arch, Run settings)}."""
    screened, acc, new = [], {n: [] for n in models}, list(grid)
    while new:
        swept = protocol.tune(f"{description} · screen, {len(new)} rates",
                              {n: (a, new, o) for n, (a, o) in models.items()}, data, screen_epochs, **options)
        screened += new
        for n, sweep in swept.items():
            acc[n] += list(100 * np.nan_to_num(sweep["val_acc"][..., -1], nan=0.0))
        order = np.argsort(screened)
        rates = [screened[i] for i in order]
        screen = {n: np.array(v)[order] for n, v in acc.items()}
        means = {n: np.where(v.mean(1) >= fail_below, v.mean(1), np.nan) for n, v in screen.items()}
        new = extend_grid(rates, means, drop, limits)
    best = {n: sorted(rates[i] for i in np.argsort(-screen[n].mean(1))[:finalists]) for n in models}
    fine = protocol.tune(f"{description} · finalists", {n: (a, best[n], o) for n, (a, o) in models.items()}, data,
                         epochs, **options)
    fine = {n: 100 * sweep["val_acc"][..., -1] for n, sweep in fine.items()}
    pick = {rule: {n: best[n][choose(fine[n])] for n in models} for rule, choose in PICKS.items()}
    return Tuned(rates, screen, best, fine, pick)


class Reports:
    """The reporting runs of a regime, by condition (model, lr): per seed, their final test accuracy, per-image
    correctness on the test set, accuracy curves, and their trained models (one StackedMLP per pass that trained
    them). A sequential design adds seeds to a condition with `add`, pass after pass."""

    def __init__(self, test):
        self.test, self.acc, self.correct, self.curves, self.stacks, self.seeds = test, {}, {}, {}, {}, {}
        self.curve_steps = None

    def add(self, parts):
        def append(store, key, rows):   # a condition's seeds, pass after pass
            store[key] = np.concatenate([store[key], rows]) if key in store else rows

        for key, part in parts.items():
            h = part.history
            append(self.acc, key, 100 * h["test_acc"][:, -1])
            append(self.correct, key, part.models.per_run(part.models.correct_per_image(self.test)).astype(bool))
            if "curve_acc" in h:
                append(self.curves, key, h["curve_acc"])
                self.curve_steps = h["curve_steps"]
            self.stacks.setdefault(key, []).append(part.models)
            self.seeds[key] = self.seeds.get(key, []) + [r.seed for r in part.runs]

    def n(self, key):
        return len(self.acc[key])

    def first(self, key, n):
        """The condition's first n seeds' final test accuracy (points)."""
        return self.acc[key][:n]

    def paired(self, a, b, n=None):
        """a − b in points, per seed and per test image [n, images] (n: the seeds both have)."""
        n = n or min(self.n(a), self.n(b))
        if self.seeds[a][:n] != self.seeds[b][:n]:
            raise ValueError(f"{a} and {b} are not paired seed by seed")
        return 100.0 * (self.correct[a][:n].astype(float) - self.correct[b][:n].astype(float))

    def decide(self, a, b, contrast, n=None):
        """The paired accuracy difference a − b decided over its seeds and the test images (n: its first n seeds)."""
        seed_means, images = per_image(self.paired(a, b, n))
        return decide(seed_means, contrast, images=images)

    def plan(self, a, b, contrast, first, maximum):
        """The sequential design for a − b: its first `first` paired seeds give n, at most `maximum`."""
        seed_means, images = per_image(self.paired(a, b, first))
        return planned_seeds(seed_means, contrast, maximum=maximum, images=images)

    def combined(self, pairs, n=None):
        """The first pair's paired difference minus each further pair's, per seed and test image [n, images]: a
        difference of differences such as [a(8) − a(64)] − [b(8) − b(64)] (n: the seeds all of them have)."""
        n = n or min(self.n(key) for pair in pairs for key in pair)
        first, *rest = [self.paired(a, b, n) for a, b in pairs]
        return first - sum(rest) if rest else first

    def decide_pairs(self, pairs, contrast, n=None):
        seed_means, images = per_image(self.combined(pairs, n))
        return decide(seed_means, contrast, images=images)

    def top_up(self, plans, first, maximum, train):
        """The sequential design over several primaries, plans {claim: (pairs, contrast)}: each primary's first
        `first` seeds give its n (at most `maximum`); every condition it reads is trained up to that n by
        `train(keys, start, stop)` (seeds start..stop − 1), one call per (start, stop). Returns {claim: n}."""
        wanted, needs = {}, {}
        for claim, (pairs, contrast) in plans.items():
            seed_means, images = per_image(self.combined(pairs, first))
            needs[claim] = planned_seeds(seed_means, contrast, maximum=maximum, images=images)
            for key in {k for pair in pairs for k in pair}:
                wanted[key] = max(wanted.get(key, first), needs[claim])
        spans = {}
        for key, n in wanted.items():
            if n > self.n(key):
                spans.setdefault((self.n(key), n), []).append(key)
        for (start, stop), keys in sorted(spans.items()):
            train(keys, start, stop)
        return needs


def bisect_edges(protocol, description, archs, seeds, data, bracket, factor, epochs, fails):
    """Per seed and model, the largest stable lr by bisection in log lr: on the bracket (increasing rates), then
    between the last rate that trains and the first that fails until their ratio is at most `factor`.

    `fails(part)` says per run whether it failed. Returns ({name: edges [seeds]}, {name: seeds whose failures on
    the bracket were not monotone in lr}, {name: seeds censored at a bracket end}). All rates of a step train in one
    pass (every run has its own lr)."""
    names = list(archs)
    parts = protocol.train(f"{description}, bracket", {n: grid_runs(seeds, bracket, archs[n]) for n in names},
                           data, epochs, evaluate=("test",))
    low, high, odd, censored = {}, {}, {}, {}
    for n in names:
        bad = rates_first(fails(parts[n]), len(bracket))               # [rates, seeds]
        first_fail = np.where(bad.any(0), bad.argmax(0), len(bracket))
        odd[n] = [s for k, s in enumerate(seeds) if bad[first_fail[k]:, k].sum() < len(bracket) - first_fail[k]]
        censored[n] = [s for k, s in enumerate(seeds) if first_fail[k] in (0, len(bracket))]
        low[n] = np.array([bracket[max(f - 1, 0)] / (factor if f == 0 else 1) for f in first_fail], dtype=float)
        high[n] = np.array([bracket[f] if f < len(bracket) else bracket[-1] for f in first_fail], dtype=float)
        low[n][first_fail == len(bracket)] = bracket[-1]
    while any((high[n] / low[n] > factor).any() for n in names):
        middle = {n: np.sqrt(low[n] * high[n]) for n in names}
        open_ = {n: np.flatnonzero(high[n] / low[n] > factor) for n in names}   # only the seeds still open train
        step = protocol.train(f"{description}, bisection", {n: [Run(seeds[k], float(middle[n][k]), arch=archs[n])
                                                                for k in open_[n]] for n in names},
                              data, epochs, evaluate=("test",))
        for n in names:
            if len(open_[n]):
                bad = fails(step[n])
                high[n][open_[n][bad]] = middle[n][open_[n][bad]]
                low[n][open_[n][~bad]] = middle[n][open_[n][~bad]]
    return low, odd, censored
