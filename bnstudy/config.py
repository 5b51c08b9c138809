"""The device, and the settings checked before any work: a bad value stops the run with what is allowed."""
import math
import re
from numbers import Integral, Real

import torch

from .data import TRAIN_IMAGES
from .protocol import BLOCK, BLOCK_TUNING

DEVICES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES_ALLOWED = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def _int(low):
    return lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= low, f"an integer >= {low}"


def _positive():
    return lambda v: isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0, \
        "a positive number"


def _list(item, sorted_=True):
    ok, what = item
    check = lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(ok(x) for x in v) and (  # noqa: E731
        len(set(v)) == len(v)) and (not sorted_ or list(v) == sorted(v))
    return check, f"a non-empty list of {what}, without repeats" + (", increasing" if sorted_ else "")


def _fraction():
    return lambda v: isinstance(v, Real) and 0 < v < 1, "a fraction between 0 and 1"


def _margins():
    return (lambda v: isinstance(v, dict) and set(v) == {"points", "ratio", "much", "evaluation"}
            and all(isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x) for x in v.values())
            and v["points"] > 0
            and v["evaluation"] > 0 and v["ratio"] > 1 and v["much"] > 1,
            "{'points': > 0, 'ratio': > 1, 'much': > 1, 'evaluation': > 0}")


SETTINGS = {  # name: (check, what is allowed)
    "SEED": _int(0), "BATCH_SIZE": _int(2), "CHECK_SIZE": _int(2), "LR": _positive(), "EPOCHS": _int(2),
    "TUNING_SEEDS": _int(2), "FIRST_SEEDS": _int(2), "MAX_SEEDS": _int(2), "MARGINS": _margins(),
    "VAL_SIZE": _int(1), "PROBE_SIZE": _int(1), "GRID": _list(_positive()), "GRID_DROP": _positive(),
    "GRID_LIMITS": _list(_positive()), "SCREEN_EPOCHS": _int(1), "FINALISTS": _int(1),
    "BAND_WITHIN": _list(_positive()), "EDGE_BRACKET": _list(_positive()), "EDGE_FACTOR": _positive(),
    "FAIL_BELOW": _fraction(), "CURVE_POINTS": _int(2), "SPEED_TARGETS": _list(_fraction(), sorted_=False),
    "CHECKPOINT_EPOCHS": _list(_int(1)), "DEPTHS": _list(_int(1)), "DEPTH_WIDTH": _int(2),
    "TEST_BATCH_SIZES": _list(_int(1)), "EVAL_BATCH": _int(2), "NOISE_LEVEL": _positive(),
    "LANDSCAPE_SIZE": _int(2), "HESSIAN_ITERATIONS": _int(2), "ACTIVATION_IMAGES": _int(2),
    "DATA_ROOT": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "DEVICE": (lambda v: isinstance(v, str) and DEVICES.fullmatch(v) is not None, DEVICES_ALLOWED),
    "RESULTS_DIR": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "BATCHES": _list(_int(2)), "SUBSET": _int(2), "BATCH_GRID": _list(_positive()),
    "SCREEN_RATES": _int(3), "SMALL_FINALISTS": _int(1), "SMALL_MAX_SEEDS": _int(2), "GROUPS": _int(1),
    "GHOSTS": _list(_int(2), sorted_=False), "OVERFIT_SIZE": _int(2), "OVERFIT_EPOCHS": _int(1),
    "OVERFIT_VAL": _int(1), "OVERFIT_GRID": _list(_positive()), "DROPOUT": _fraction(), "RISE": _positive(),
    "WIDE": _list(_int(1), sorted_=False),
}


def _train(s):
    """Images in the training split (the tuning and reporting runs train on it)."""
    return TRAIN_IMAGES - s["VAL_SIZE"]


def _batches_split(s):
    """Every (training-set size, batch size) pair the notebook trains or recomputes statistics with."""
    return [(TRAIN_IMAGES, s["BATCH_SIZE"]), (_train(s), s["BATCH_SIZE"]), (s["CHECK_SIZE"], s["BATCH_SIZE"]),
            (s["OVERFIT_SIZE"], s["BATCH_SIZE"])] + [(s["SUBSET"], b) for b in s["BATCHES"]]


RELATIONS = (  # settings that must agree with each other: (holds(settings), what to fix)
    (lambda s: s["LR"] in s["GRID"], "LR must be one of GRID (the grid compares every model at the reference lr too)"),
    (lambda s: s["FIRST_SEEDS"] <= s["MAX_SEEDS"], "FIRST_SEEDS must be at most MAX_SEEDS"),
    (lambda s: s["TUNING_SEEDS"] <= BLOCK - BLOCK_TUNING and s["MAX_SEEDS"] <= BLOCK_TUNING,
     f"at most {BLOCK - BLOCK_TUNING:,} tuning and {BLOCK_TUNING:,} reporting seeds (a SEED's block)"),
    (lambda s: s["SEED"] < 2 ** 31 // BLOCK, f"SEED must be below {2 ** 31 // BLOCK:,} (its block stays below 2**31)"),
    (lambda s: len(s["GRID_LIMITS"]) == 2 and s["GRID_LIMITS"][0] <= s["GRID"][0] and s["GRID"][-1] <= s["GRID_LIMITS"][1],
     "GRID_LIMITS must be [lowest, highest] and hold the GRID"),
    (lambda s: len(s["GRID"]) >= 3 and s["FINALISTS"] <= len(s["GRID"]), "GRID needs 3 rates, FINALISTS at most as many"),
    (lambda s: len(s["EDGE_BRACKET"]) >= 2 and s["EDGE_FACTOR"] > 1,
     "EDGE_BRACKET needs two rates and EDGE_FACTOR must be above 1"),
    (lambda s: all(e < s["EPOCHS"] for e in s["CHECKPOINT_EPOCHS"]), "CHECKPOINT_EPOCHS must come before the end"),
    (lambda s: s["VAL_SIZE"] < TRAIN_IMAGES and s["PROBE_SIZE"] <= s["VAL_SIZE"],
     f"VAL_SIZE must be below {TRAIN_IMAGES:,} (the training images) and PROBE_SIZE at most VAL_SIZE"),
    (lambda s: s["LANDSCAPE_SIZE"] <= _train(s) and s["ACTIVATION_IMAGES"] <= TRAIN_IMAGES,
     f"LANDSCAPE_SIZE must fit in the training split ({TRAIN_IMAGES:,} − VAL_SIZE)"),
    (lambda s: math.ceil(_train(s) / s["BATCH_SIZE"]) > 100,
     "an epoch of the training split must have more than 100 steps (3.2 follows the weights at step 100)"),
    (lambda s: all(n % b != 1 for n, b in _batches_split(s)),
     "no training set may end in a batch of one image (BatchNorm needs 2): change a size or a batch size"),
    (lambda s: {4, s["EVAL_BATCH"], 10_000} <= set(s["TEST_BATCH_SIZES"]),
     "TEST_BATCH_SIZES must include 4, EVAL_BATCH and 10000 (the evaluation-pitfall rows read them)"),
    (lambda s: s["CHECK_SIZE"] <= _train(s), f"CHECK_SIZE must fit in the training split ({TRAIN_IMAGES:,} − VAL_SIZE)"),
    (lambda s: s["BATCH_SIZE"] in s["BATCHES"] and len(s["BATCHES"]) >= 2,
     "BATCHES must hold BATCH_SIZE and one more (8.1 compares every batch size with the reference's)"),
    (lambda s: max(s["SUBSET"], s["OVERFIT_SIZE"]) <= _train(s) and s["OVERFIT_VAL"] <= s["VAL_SIZE"],
     "SUBSET and OVERFIT_SIZE must fit in the training split, OVERFIT_VAL in the validation split"),
    (lambda s: all(math.gcd(g, max(s["BATCHES"])) >= 2 and math.gcd(g, s["SUBSET"] % max(s["BATCHES"])
                                                                     or max(s["BATCHES"])) >= 2 for g in s["GHOSTS"]),
     "every ghost batch size must split the largest batch (and the last, short one) into groups of 2 or more"),
    (lambda s: all(s["SUBSET"] % b == 0 for b in s["BATCHES"]) and s["OVERFIT_SIZE"] % s["BATCH_SIZE"] == 0,
     "every batch size must divide SUBSET, and BATCH_SIZE OVERFIT_SIZE: a short last batch gives BatchNorm a noisy "
     "last step every epoch (on 5,000 images in batches of 64 it made BatchNorm's accuracy swing between epochs)"),
    (lambda s: s["SMALL_FINALISTS"] <= s["SCREEN_RATES"] <= len(s["BATCH_GRID"])
     and s["FIRST_SEEDS"] <= s["SMALL_MAX_SEEDS"] <= BLOCK_TUNING and len(s["WIDE"]) >= 1,
     "SMALL_FINALISTS ≤ SCREEN_RATES ≤ len(BATCH_GRID), FIRST_SEEDS ≤ SMALL_MAX_SEEDS, WIDE one width or more"),
)


def check_config(settings):
    """Fail at once, with what to fix, on any setting that is missing, of the wrong kind, or out of range.

    `settings` maps every name of SETTINGS to its value (the notebook passes its parameters cell's globals).
    """
    missing = [name for name in SETTINGS if name not in settings]
    if missing:
        raise ValueError(f"Bad config: missing setting(s) {', '.join(missing)}.")
    problems = [f"{name} must be {what}, got {settings[name]!r}" for name, (ok, what) in SETTINGS.items()
                if not ok(settings[name])]
    if not problems:
        problems = [message for holds, message in RELATIONS if not holds(settings)]
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ".")


def pick_device(requested="auto"):
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit device that is absent falls back to the CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if requested == "auto":
        return torch.device(next(kind for kind, ok in available.items() if ok))
    if not DEVICES.fullmatch(str(requested)):
        raise ValueError(f"Unknown device {requested!r}: use {DEVICES_ALLOWED}.")
    kind = str(requested).split(":")[0]
    if not available[kind]:
        print(f"Note: device {requested!r} is not available here; falling back to the CPU.")
        return torch.device("cpu")
    return torch.device(requested)
