"""The device, and the settings checked before any work: a bad value stops the run with what is allowed."""
import math
import re
from numbers import Integral, Real

import torch

from .models import Arch

TRAIN_IMAGES = 60_000                         # Fashion-MNIST's training set; the last VAL_SIZE of them validate
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


COMPARABLE_NORMS = ("none", "batchnorm", "batchnorm_after_relu", "layernorm", "groupnorm")  # what 4.3-4.5 compare
ALTERNATIVES = COMPARABLE_NORMS[2:]   # the normalisations 4.5 sets against BatchNorm before the ReLU and none


def _norms(allowed):
    return lambda v: v in allowed, f"one of {', '.join(allowed)}"


def _rates_by_optimizer():
    rates, what = _list(_positive())
    return (lambda v: isinstance(v, dict) and set(v) == {"SGD, momentum 0.9", "Adam"} and all(map(rates, v.values())),
            f"{{'SGD, momentum 0.9': [...], 'Adam': [...]}}, each {what}")


SETTINGS = {  # name: (check, what is allowed)
    "SEED": _int(0), "BATCH_SIZE": _int(2), "LR": _positive(), "EPOCHS": _int(2), "N_SEEDS": _int(2),
    "SWEEP_SEEDS": _int(2), "VAL_SIZE": _int(1), "PROBE_SIZE": _int(1), "LEARNING_RATES": _list(_positive()),
    "CURVE_POINTS": _int(2), "SPEED_TARGETS": _list(_fraction()), "CONTROL_RATES": _list(_positive()),
    "INIT_SCALES": _list(_positive()), "INIT_EPOCHS": _int(1), "NORMALISATIONS": _list(_norms(ALTERNATIVES), sorted_=False),
    "GROUPNORM_GROUPS": _int(1), "DEPTHS": _list(_int(1)), "DEPTH_WIDTH": _int(2), "DEPTH_RATES": _list(_positive()),
    "DEPTH_TRAIN_SIZE": _int(1), "COMPARED_NORMS": _list(_norms(COMPARABLE_NORMS), sorted_=False),
    "OPTIMIZER_RATES": _rates_by_optimizer(), "OPTIMIZER_EPOCHS": _int(1), "SHORT_TRAIN_SIZE": _int(1),
    "LONG_EPOCHS": _int(2), "LONG_TRAIN_SIZE": _int(1), "DROPOUTS": _list((lambda v: isinstance(v, Real) and not isinstance(v, bool) and 0 <= v < 1, "rates in [0, 1)")),
    "TEST_BATCH_SIZES": _list(_int(1)), "GHOST_BATCH": _int(4), "GHOST_SIZES": _list(_int(2)), "GHOST_EPOCHS": _int(1),
    "TINY_BATCHES": _list(_int(2)), "TINY_TRAIN_SIZE": _int(1), "NOISE_LEVEL": _positive(),
    "LANDSCAPE_SIZE": _int(2), "HESSIAN_ITERATIONS": _int(2), "ACTIVATION_IMAGES": _int(2),
    "DATA_ROOT": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "DEVICE": (lambda v: isinstance(v, str) and DEVICES.fullmatch(v) is not None, DEVICES_ALLOWED),
    "RESULTS_DIR": (lambda v: isinstance(v, str) and v != "", "a folder path"),
}

def _train(s):
    """Images in the training split (the tuning runs train on it)."""
    return TRAIN_IMAGES - s["VAL_SIZE"]


def _batches_split(s):
    """Every (training-set size, batch size) pair the notebook trains or recomputes statistics with."""
    train = _train(s)
    pairs = [(TRAIN_IMAGES, s["BATCH_SIZE"]), (train, s["BATCH_SIZE"]), (train, s["GHOST_BATCH"])]
    pairs += [(3_200, s["BATCH_SIZE"])]   # the engine check of section 2 trains on the first 3,200 training images
    pairs += [(s[name], s["BATCH_SIZE"]) for name in ("DEPTH_TRAIN_SIZE", "SHORT_TRAIN_SIZE", "LONG_TRAIN_SIZE")]
    return pairs + [(s["TINY_TRAIN_SIZE"], b) for b in s["TINY_BATCHES"] + [s["BATCH_SIZE"]]]


RELATIONS = (  # settings that must agree with each other: (holds(settings), what to fix)
    (lambda s: s["LR"] in s["LEARNING_RATES"] and s["LR"] in s["CONTROL_RATES"],
     "LR must be one of LEARNING_RATES and of CONTROL_RATES (the sweeps compare every model at the reference lr)"),
    (lambda s: set(s["CONTROL_RATES"]) <= set(s["LEARNING_RATES"]),
     "CONTROL_RATES must be a sub-grid of LEARNING_RATES (the controls reuse the sweep's runs at those rates)"),
    (lambda s: s["VAL_SIZE"] < TRAIN_IMAGES and s["PROBE_SIZE"] <= s["VAL_SIZE"],
     "VAL_SIZE must be below 60,000 (the training images) and PROBE_SIZE at most VAL_SIZE"),
    (lambda s: all(s[n] <= _train(s) for n in ("DEPTH_TRAIN_SIZE", "SHORT_TRAIN_SIZE", "LONG_TRAIN_SIZE",
                                               "TINY_TRAIN_SIZE", "LANDSCAPE_SIZE")) and s["ACTIVATION_IMAGES"] <= TRAIN_IMAGES,
     "DEPTH_, SHORT_, LONG_, TINY_TRAIN_SIZE and LANDSCAPE_SIZE must fit in the training split (60,000 − VAL_SIZE)"),
    (lambda s: math.ceil(_train(s) / s["BATCH_SIZE"]) > 100,
     "an epoch of the training split must have more than 100 steps (section 7 probes a checkpoint at step 100)"),
    (lambda s: all(n % b != 1 for n, b in _batches_split(s)),
     "no training set may end in a batch of one image (BatchNorm needs 2): change a size or a batch size"),
    (lambda s: all(math.gcd(g, _train(s) % s["GHOST_BATCH"] or g) >= 2 for g in s["GHOST_SIZES"]),
     "the last, short batch of the training split must split into ghost groups of 2 or more images"),
    (lambda s: "none" in s["COMPARED_NORMS"] and "batchnorm" in s["COMPARED_NORMS"],
     "COMPARED_NORMS must include 'none' and 'batchnorm'"),
    (lambda s: {"layernorm", "groupnorm"} & set(s["NORMALISATIONS"]),
     "NORMALISATIONS must include layernorm or groupnorm (4.5's verdict sets BatchNorm against them)"),
    (lambda s: all(w % s["GROUPNORM_GROUPS"] == 0 for w in (*Arch().hidden, s["DEPTH_WIDTH"])),
     "GROUPNORM_GROUPS must divide the hidden widths 64 and 32 and DEPTH_WIDTH"),
    (lambda s: 0.0 in s["DROPOUTS"], "DROPOUTS must include 0.0 (the run without dropout)"),
    (lambda s: {4, 1000, 10_000} <= set(s["TEST_BATCH_SIZES"]),
     "TEST_BATCH_SIZES must include 4, 1000 and 10000 (the evaluation-pitfall verdict reads them)"),
    (lambda s: 2 in s["GHOST_SIZES"] and s["GHOST_SIZES"][-1] == s["GHOST_BATCH"]
     and all(s["GHOST_BATCH"] % g == 0 for g in s["GHOST_SIZES"])
     and any(8 <= g < s["GHOST_BATCH"] for g in s["GHOST_SIZES"]),
     "GHOST_SIZES must divide GHOST_BATCH, include 2 and a size from 8 up, and end with GHOST_BATCH itself"),
    (lambda s: len(s["TINY_BATCHES"]) >= 3, "TINY_BATCHES needs at least three batch sizes (the smallest is compared "
                                            "with the largest and the second largest)"),
    (lambda s: len(s["DEPTHS"]) >= 2, "DEPTHS needs at least two depths to compare"),
    (lambda s: s["SEED"] + max(s["N_SEEDS"], s["SWEEP_SEEDS"]) < 2**31, "SEED + the number of seeds must stay below 2**31"),
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
