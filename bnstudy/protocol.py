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

TUNING_OFFSET = 1_000   # tuning seeds are SEED + 1000, SEED + 1001, ...; reporting seeds SEED, SEED + 1, ...
MAX_REPORTING_SEEDS = TUNING_OFFSET   # so that the two never meet


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


def best_rate(sweep):
    """Index of the chosen lr: the smallest within one standard error of the best mean final validation accuracy.

    `sweep` holds the tuning seeds only: the validation split of other seeds than the reporting ones decides.
    """
    return one_se_pick(sweep["val_acc"][..., -1])


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

    `train` trains named lists of runs in one pass; `tune` trains named lr grids on the tuning seeds without the
    test split and chooses each grid's lr; `report` trains on reporting seeds without the validation split.
    `model_epochs` adds up what every pass returned.
    """

    def __init__(self, seed, tuning_seeds, batch_size, progress=True):
        if tuning_seeds < 2:
            raise ValueError("the selection rule needs at least two tuning seeds")
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
        self.tuning_seeds = [seed + TUNING_OFFSET + i for i in range(tuning_seeds)]
        self.model_epochs = 0.0

    def reporting_seeds(self, n):
        """The first n reporting seeds: SEED, SEED + 1, ..."""
        if n > MAX_REPORTING_SEEDS:
            raise ValueError(f"at most {MAX_REPORTING_SEEDS:,} reporting seeds (tuning seeds start at SEED + "
                             f"{TUNING_OFFSET:,})")
        return [self.seed + i for i in range(n)]

    def count(self, trained):
        """Add a pass trained outside the protocol (the notebook's float64 engine check) to `model_epochs`."""
        self.model_epochs += trained.model_epochs
        return trained

    def train(self, description, named_runs, data, epochs, **options):
        """Train every run of named_runs ({name: [Run]}) in one pass; {name: Part}."""
        runs = [run for group in named_runs.values() for run in group]
        options.setdefault("batch_size", self.batch_size)
        trained = train_runs(runs, data, epochs, progress=description if self.progress else None, **options)
        self.model_epochs += trained.model_epochs
        return parts_of(trained, named_runs)

    def tune(self, description, grids, data, epochs, **options):
        """Each grid ({name: (arch, rates, Run settings)}) on the tuning seeds, all in one pass, with the test split
        dropped: {name: (sweep [rates, seeds, ...], index of the chosen lr)}."""
        named = {name: grid_runs(self.tuning_seeds, rates, arch, **settings)
                 for name, (arch, rates, settings) in grids.items()}
        parts = self.train(description, named, without(data, "test"), epochs, evaluate=("val",), every_epoch=False,
                           **options)
        sweeps = {name: by_rate(parts[name].history, len(grids[name][1])) for name in grids}
        return {name: (sweep, best_rate(sweep)) for name, sweep in sweeps.items()}

    def report(self, description, named_runs, data, epochs, **options):
        """Reporting runs, read on the test split; the validation split is dropped (it only chooses)."""
        options.setdefault("evaluate", ("test",))
        return self.train(description, named_runs, without(data, "val"), epochs, **options)
