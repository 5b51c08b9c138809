"""The claims registry: every claim the study tries, as its source makes it, written before the confirmatory run.

Each claim has its statement as the source makes it (verbatim as docs/sources.md quotes it, some quotes read in a
copy of the paper, or marked as a paraphrase), the citation and the source's own regime, the study's regime for it,
one primary contrast (direction, margin and the margin's reason), and its **sensitivity conditions**: every other condition the study runs
for it, each decided by the same rule. A row then reads *robust*, or *depends on* the conditions whose decided
verdict differs from the primary's (`bnstudy.stats.robustness`). `seen_before` says what an exploratory run had
already shown before this registry was written, so that a reader can tell a test from a confirmation.

The regimes are the protocol: the values in their descriptions are the confirmatory run's. A run with other
settings (papermill can set any) is exploratory, and says so.
"""
import dataclasses
import hashlib
from pathlib import Path

from .stats import Contrast

POINT = "a point of accuracy is the smallest gain a reader would act on"
QUARTER = "a quarter of a change"

REGIMES = {  # name: what every run of the regime shares
    "reference": "the tutorial's recipe: 784 → 64 → 32 → 10, plain SGD at lr 0.001, no momentum, batch 64 in a "
                 "shuffled order, 5 epochs of all 60,000 training images, test accuracy on the 10,000 test images; "
                 "reporting seeds by the sequential design (the first 10 estimate the spread, at most 30)",
    "lr grid": "baseline, BatchNorm, LayerNorm, noisy BatchNorm and two scale controls (standardised inputs with He "
               "init; frozen BatchNorm), and GroupNorm (4 groups per layer) and BatchNorm after the ReLU in passes "
               "of their own (so that the other models' runs stay as they were); plain SGD, batch 64, 5 epochs of the 40,000-image training split, constant "
               "lr; a half-decade grid from 0.001 to 3, extended on either side until each model's mean is at least "
               "5 points below its best or fails; tuned coarse to fine on 5 tuning seeds and the validation split (a "
               "1-epoch screen of the whole grid, then the best 3 rates at 5 epochs, and each control at lr 0.001 "
               "too); each model's lr by argmax (primary) and by the one-SE rule (sensitivity); reporting: 10 seeds "
               "at every grid point for the baseline and BatchNorm and at the picks for the others (BatchNorm after the ReLU also at "
               "the tutorial's lr), then up to 30 by "
               "the sequential design at each condition a primary reads (the band-width row stays at 10: each more "
               "seed costs the whole grid), read on the test set",
    "lr edge": "per seed and model, the largest stable lr by bisection in log lr, to a factor of 1.1, between the "
               "last rate that trains and the first that fails (test accuracy below 20 % or a non-finite training "
               "loss) on a decade bracket from 0.01 to 1,000, after 1 epoch of the training split; a seed whose "
               "failures on the bracket are not monotone in lr is reported",
    "long": "the 40,000-image training split, 20 epochs (4× the lr grid's steps), constant lr (primary) and cosine "
            "to 0 (sensitivity), each model's lr tuned in this regime",
    "overfitting": "the first 5,120 images of the training split (80 batches of 64: no short last batch, whose "
                   "8-image step every epoch made BatchNorm unstable in a first run on 5,000 images), 100 epochs, constant lr tuned in this regime: small enough that the "
                   "baseline's validation loss on the tuning seeds rises at least 10 % above its minimum by the end; "
                   "plain SGD, batch 64; each model's lr by argmax over 0.03 and 0.1 on 5 tuning seeds and the "
                   "first 2,000 images of the validation split (read after every epoch, for the rise; two rates, "
                   "chosen by a development-seed pilot, for the budget: each run is 100 epochs); reporting: 10 "
                   "seeds, then up to 20 by the sequential design (a budget choice), read on the test set",
    "init": "init multipliers 0.01, 0.1, 1 and 10 on the default init, 5 epochs of the training split, lr chosen "
            "per multiplier and model (argmax on the tuning seeds) on the lr grid's rates",
    "depth": "2, 8 and 16 hidden layers of 64, 5 epochs of the first 10,000 training images (a budget choice), lr "
             "chosen per depth and network on the tuning seeds",
    "optimisers": "SGD with momentum 0.9 (half-decade grid 0.001-0.3) and Adam (1e-4-0.03), 5 epochs of the "
                  "training split, lr by argmax on the tuning seeds; a pick at a grid edge extends the grid",
    "batch size": "baseline, BatchNorm, LayerNorm and GroupNorm (4 groups of units per layer: 16 units per group in "
                  "the first hidden layer, 8 in the second) at batches of 8, 32, 64, 128 and 512, and ghost BatchNorm "
                  "at 512; plain SGD, 5 epochs of the first 10,240 images of the training split at every batch size "
                  "(a budget choice: one training set and one epoch count for all, so a larger batch takes fewer "
                  "steps; 10,240 is 20 batches of 512, so that no epoch ends in a short batch, whose noisy last "
                  "step made BatchNorm unstable in a first run on 10,000 images); each model's lr tuned per batch size on 5 tuning seeds and the validation split, coarse to "
                  "fine as the lr grid's (a 1-epoch screen of the 5 half-decades from 0.0003 to 3 nearest in log lr "
                  "to the linear-scaling guess a · B / 64, a being BatchNorm's argmax lr on the lr grid, extended by "
                  "the same rule; then the best 2 rates at 5 epochs: fewer rates and one finalist fewer than the lr "
                  "grid, for the budget), "
                  "argmax; the linear scaling rule (Goyal et al. 2017) sets BatchNorm's lr to its tuned lr at batch "
                  "64 × B / 64, no warm-up; reporting: 10 seeds, then up to 20 by the sequential design at each "
                  "condition a primary reads (a budget choice), read on the test set",
    "wide": "the tutorial family's MNIST network, 784 → 256 → 128 → 10, baseline and BatchNorm, in the batch-size "
            "regime at batch 64 (its data, tuning and seeds, the screen's 5 rates around a): plain SGD and SGD with "
            "momentum 0.9 as that version trains it (its screen around a / 10, a decade lower: momentum 0.9 "
            "multiplies the step by about 10); the reference network's rows at batch 64 of the same regime beside it",
    "evaluation": "the reference regime's BatchNorm models, evaluated on the test set",
    "same point": "each reporting seed's trained baseline of the lr grid at its argmax lr and its BatchNorm twin (the "
                  "same weights with BatchNorm inserted, γ and β set so that the twin computes what the baseline "
                  "computes on the probe batch), on a fixed batch of 1,000 training images",
}

BUDGET_CUT = ("cut from this round's confirmatory run to fit its 10-minute budget (the lr grid, tried fairly, costs "
              "most of it); registered here so that its trial is fixed before it is run")


@dataclasses.dataclass(frozen=True)
class Condition:
    """A sensitivity condition: how it differs from the primary, and in which regime it runs."""
    name: str
    regime: str
    differs: str


@dataclasses.dataclass(frozen=True)
class Claim:
    """One row of the study: a claim as its source makes it, and how the study tries it."""
    key: str                  # the notebook section, e.g. "3.3"
    claim: str                # the claim in the study's words, for the tables
    statement: str            # the source's words
    verbatim: bool            # True: quoted as seen (docs/sources.md); False: our paraphrase
    source: str               # the citation
    source_regime: str        # where the source makes it
    regime: str               # the study's regime (a key of REGIMES)
    primary: Contrast         # the one contrast that decides
    sensitivity: tuple = ()   # Conditions, each decided by the same rule
    seen_before: str = ""     # what an exploratory run had shown before this registry (empty: nothing)
    disagreement: str = ""    # where the study's regime departs from the source's, said beside the row
    cut: str = ""             # why the claim is not run in this round (empty: it is)


def contrast(what, direction, margin=1.0, why=POINT, ratio=False, unit="points"):
    return Contrast(what, direction, margin, why, ratio=ratio, unit=unit)


ONE_SE = Condition("one-SE picks", "lr grid", "each model at the lr the one-SE rule picks on the tuning seeds")

CLAIMS = (
    Claim("2", "BatchNorm beats the baseline at the tutorial's settings",
          "its published runs: BatchNorm 71.55 / 76.19 / 78.14 / 79.43 / 80.56 % against the baseline's 20.43 / "
          "31.87 / 42.40 / 45.02 / 56.32 % test accuracy after epochs 1-5 (one run of each)", False,
          "the tutorial repository's Assignment_6.ipynb (its published single runs)", "the reference regime, one run",
          "reference", contrast("BatchNorm − baseline, test accuracy after 5 epochs at the tutorial's lr (points)", +1),
          (Condition("40,000 images", "lr grid", "the lr grid's runs at the tutorial's lr (the training split, "
                                                  "not all 60,000 images)"),),
          seen_before="holds in every earlier run (+22.3 [+21.2, +23.3] points, 30 seeds)"),
    Claim("3.1", "BatchNorm allows much higher learning rates",
          "Batch Normalization allows us to use much higher learning rates and be less careful about initialization.",
          True, "Ioffe & Szegedy 2015, abstract", "Inception on ImageNet, SGD with momentum, BatchNorm throughout",
          "lr edge", contrast("largest stable lr, BatchNorm / baseline, per seed (1 epoch)", +1, 2.0,
                              "the claim says much higher: at least twice", ratio=True, unit="×"),
          (), seen_before="on a grid stepping about 3×, 10× [10×, 10×] in every seed (a zero-width CI)"),
    Claim("3.3", "BatchNorm gives higher accuracy, with each model at its own lr",
          "We conduct several experiments, and show that BN primarily enables training with larger learning rates, "
          "which is the cause for faster convergence and better generalization.", True,
          "Bjorck et al. 2018, NeurIPS abstract", "ResNets on CIFAR-10", "lr grid",
          contrast("BatchNorm − baseline, each at its own argmax lr, test accuracy after 5 epochs (points)", +1),
          (ONE_SE,),
          seen_before="not resolved with one-SE picks (+0.9 [+0.5, +1.2]); an argmax run gave +1.7 ± 0.8"),
    Claim("3.3", "BatchNorm's lead comes through the larger rates it allows",
          "BN primarily enables training with larger learning rates (read: each model at its own lr, BatchNorm's "
          "lead is larger than with both at the baseline's lr)", False, "Bjorck et al. 2018", "ResNets on CIFAR-10",
          "lr grid",
          contrast("BatchNorm − baseline each at its own argmax lr, minus the same with both at the baseline's "
                   "argmax lr, test accuracy after 5 epochs (points)", +1),
          (ONE_SE,),
          seen_before="only at lr 0.001 (+22 points) and at the chosen lrs (there both picked the same lr)",
          disagreement="where both models pick the same lr the contrast is 0 in every seed by construction: the "
                       "row then needs a finer measurement (a finer grid), which this round does not make"),
    Claim("3.3", "BatchNorm's lead at each learning rate",
          "the tutorial's comparison, at one lr for both models, made at every lr of the grid", False,
          "the tutorial, which compares the two models at one lr", "the reference regime", "lr grid",
          contrast("BatchNorm − baseline, both at the baseline's argmax lr, test accuracy after 5 epochs (points)",
                   +1),
          (Condition("every other grid lr", "lr grid", "both at each other rate of the grid, a row each: where "
                                                      "the lead lives"),),
          seen_before="+22 points at lr 0.001; about a point at lr 0.1 and 0.3"),
    Claim("3.3", "BatchNorm widens the band of good learning rates",
          "It is empirically proven to make models less sensitive to learning rates and initialization", True,
          "Wu & Johnson 2021, introduction", "ImageNet-scale CNNs", "lr grid",
          contrast("width of the band of lrs within 1 point of the model's best, BatchNorm − baseline, per reporting "
                   "seed (decades, linear in log lr between grid points)", +1, 0.25,
                   "a quarter of a decade, less than one half-decade grid step", unit="decades"),
          (Condition("within 2 points", "lr grid", "the band within 2 points of the best"),)),
    Claim("3.4", "At the tutorial's lr BatchNorm beats the best scale control (no batch statistics)",
          "the tutorial's reading of its result: BatchNorm's gain comes from normalising with batch statistics",
          False, "the tutorial", "the reference regime", "lr grid",
          contrast("BatchNorm − the best scale control (chosen on the tuning seeds), both at the tutorial's lr, "
                   "test accuracy after 5 epochs (points)", +1),
          (Condition("each at its chosen lr", "lr grid", "BatchNorm and the best control each at its argmax lr"),),
          seen_before="the opposite holds at lr 0.001 (−2.8 [−3.1, −2.5]); at the best lr 0.7 ± 1.1"),
    Claim("4.1", "BatchNorm makes training faster",
          "Applied to a state-of-the-art image classification model, Batch Normalization achieves the same accuracy "
          "with 14 times fewer training steps", True, "Ioffe & Szegedy 2015, abstract",
          "Inception on ImageNet, with a raised lr and other changes to the training", "lr grid",
          contrast("steps to 80 % accuracy on 1,000 test images, baseline / BatchNorm, each at its argmax lr; a run "
                   "that never reaches it counts the last step", +1, 1.25, "a quarter fewer steps", ratio=True,
                   unit="×"),
          (Condition("85 %", "lr grid", "steps to 85 % instead of 80 %"), ONE_SE),
          seen_before="holds at 4 SEEDs (3.3-3.7×); at SEED 7 one-SE picks gave 1.14×"),
    Claim("4.2", "BatchNorm reduces sensitivity to initialisation",
          "In practice networks that use Batch Normalization are significantly more robust to bad initialization.",
          True, "CS231n notes, Neural Networks Part 2 (and Ioffe & Szegedy 2015, abstract)", "deep CNNs", "init",
          contrast("spread (best − worst) of test accuracy across init multipliers, baseline − BatchNorm, each at "
                   "its lr per multiplier (points)", +1),
          (Condition("lr tuned at ×1 only", "init", "each model at its ×1 lr for every multiplier"),),
          seen_before="+66 points after 1 epoch with the lr tuned at ×1 only (the baseline at chance at ×0.01)",
          disagreement="with the lr fixed, ×0.01 leaves the baseline at chance by construction; the primary re-tunes "
                       "per multiplier, and a pick at a grid edge extends the grid; the source's networks are deep "
                       "CNNs, these are two-hidden-layer MLPs",
          cut=BUDGET_CUT),
    Claim("4.3", "BatchNorm matters more as networks get deeper",
          "batch normalization has made it possible for practitioners to routinely train networks with over 100 "
          "layers.", True, "d2l.ai, Batch Normalization", "deep CNNs", "depth",
          contrast("(BatchNorm − He init) at 16 hidden layers − the same at 2, each at its lr per depth (points)", +1),
          (Condition("against the default init", "depth", "BatchNorm − baseline (default init) instead of He init"),),
          seen_before="+11.9 points after 1 epoch of 10,000 images",
          disagreement="the source speaks of networks of over 100 layers; these MLPs have at most 16 hidden layers",
          cut=BUDGET_CUT),
    Claim("4.3", "BatchNorm's gradients explode with depth at initialisation",
          "We find that gradient signals grow exponentially in depth and that these exploding gradients cannot be "
          "eliminated by tuning the initial weight variances or by adjusting the nonlinear activation function.",
          True, "Yang et al. 2019, abstract", "mean-field theory of wide fully connected BatchNorm networks", "depth",
          contrast("‖∂L/∂W‖ of the second Linear over Linear 16 (64 × 64 both) at init, BatchNorm, 16 hidden "
                   "layers", +1, 2.0, "at least a doubling across the network", ratio=True, unit="×"),
          (Condition("8 hidden layers", "depth", "the second Linear over the last hidden Linear at 8 layers"),),
          seen_before="holds (8.9×)"),
    Claim("4.4", "BatchNorm still matters with SGD with momentum",
          "the tutorial's momentum version trains with momentum 0.9; common practice", False,
          "the tutorial family's MNIST notebook", "784 → 256 → 128 → 10 on MNIST", "optimisers",
          contrast("BatchNorm − baseline, SGD with momentum 0.9, each at its argmax lr, test accuracy after 5 "
                   "epochs (points)", +1), (ONE_SE,),
          seen_before="+3.5 points after 1 epoch of 25,000 images, BatchNorm's pick at its grid's edge",
          cut=BUDGET_CUT),
    Claim("4.4", "BatchNorm still matters with Adam",
          "common practice: BatchNorm is used with adaptive optimisers too", False, "common practice", "any",
          "optimisers",
          contrast("BatchNorm − baseline, Adam, each at its argmax lr, test accuracy after 5 epochs (points)", +1),
          (ONE_SE,), seen_before="+1.1 ± 0.8, not resolved, after 1 epoch (then descriptive)",
          cut=BUDGET_CUT),
    Claim("4.5", "BatchNorm beats LayerNorm, which uses no batch statistics",
          "the usual choice of BatchNorm for MLPs", False, "common practice", "any", "lr grid",
          contrast("BatchNorm − LayerNorm, each at its argmax lr, test accuracy after 5 epochs (points)", +1),
          (ONE_SE,), seen_before="no effect that matters (+0.1 [−0.4, +0.5]) with one-SE picks; GroupNorm (tuned "
                                 "1.1 ± 0.4 below BatchNorm) comes back with the next round's claims"),
    Claim("5", "BatchNorm's lead lasts (it is final accuracy, not only speed)",
          "the tutorial's 5-epoch table, read as a final result", False, "the tutorial", "the reference regime",
          "long", contrast("BatchNorm − baseline after 20 epochs, constant lr, each at its lr tuned in this regime "
                           "(points)", +1),
          (Condition("cosine", "long", "a cosine schedule to 0 instead of a constant lr"),),
          seen_before="no effect that matters after 25 epochs of 10,000 images with a cosine schedule (−0.1)",
          cut=BUDGET_CUT),
    Claim("5", "BatchNorm acts as a regulariser",
          "It also acts as a regularizer, in some cases eliminating the need for Dropout.", True,
          "Ioffe & Szegedy 2015, abstract", "Inception on ImageNet", "overfitting",
          contrast("BatchNorm − baseline, test accuracy at the end, each at its lr tuned in this regime (points)", +1),
          (Condition("test loss", "overfitting", "baseline / BatchNorm test cross-entropy at the end, margin 1.1×"),),
          seen_before="read as a train − test gap in the long regime: the opposite (−6.2), which was better fit, "
                      "not worse generalisation; the overfitting regime is new",
          cut=BUDGET_CUT),
    Claim("5", "Weight decay helps a BatchNorm network",
          "We identify three distinct mechanisms by which weight decay exerts a regularization effect, depending on "
          "the particular optimization algorithm and architecture: (1) increasing the effective learning rate", True,
          "Zhang et al. 2019, abstract (with van Laarhoven 2017)", "CIFAR-10 and ImageNet classifiers", "long",
          contrast("BatchNorm's test accuracy with weight decay − without, at a dose with λ·η·T ≥ 1 and first-layer "
                   "‖w‖² changing < 5 % over the last 20 % of steps (points)", +1),
          (Condition("the baseline", "long", "the same contrast for the baseline, where decay is a plain L2 penalty"),),
          seen_before="no effect that matters at λ = 5e-4, a dose that moved ‖w‖² only 1.1×",
          cut=BUDGET_CUT),
    Claim("6.1", "Evaluating with batch statistics (forgetting model.eval()) costs accuracy",
          "The normalization of activations that depends on the mini-batch allows efficient training, but is "
          "neither necessary nor desirable during inference", True, "Ioffe & Szegedy 2015, section 3.1",
          "any BatchNorm network", "evaluation",
          contrast("test accuracy in eval mode − with the statistics of random test batches of 64 (points)", +1),
          (Condition("batches of 4", "evaluation", "random test batches of 4"),
           Condition("class-sorted", "evaluation", "test batches of 64 sorted by class"),
           Condition("file order", "evaluation", "test batches of 64 in the file's order")),
          seen_before="batches of 4: +17.8; batches of 64: 0.21 (random), 0.70 (file order), 60.9 (class-sorted), "
                      "one seed"),
    Claim("6.2", "Precise BatchNorm statistics beat the running averages (EMA)",
          "During training both BN stats and the weight are changing after every iteration, so the running average "
          "can not precisely reflect the actual stats of the current model.", True,
          "fvcore, precise_bn.py (and Wu & Johnson 2021, section 3)", "detection and classification CNNs",
          "lr grid", contrast("test accuracy with precise statistics − with the EMA, BatchNorm at its argmax lr, "
                              "constant lr (points)", +1, 0.5, "half a point, for a fix that costs a pass over the "
                                                                "training set"),
          (Condition("the tutorial's lr", "lr grid", "BatchNorm at the tutorial's lr, where its weights move slowly"),),
          seen_before="+1.00 ± 0.33 at a constant lr; +0.1 after a cosine decay to 0"),
    Claim("7.1", "Shifting BatchNorm's outputs at every step costs its gain (as it would if BatchNorm worked by "
                 "reducing internal covariate shift)",
          "We train networks with random noise injected after BatchNorm layers. [...] We emphasize that this noise "
          "distribution changes at each time step.", True,
          "Santurkar et al. 2018 (testing Ioffe & Szegedy 2015's title claim)", "VGG on CIFAR-10, standard settings",
          "lr grid",
          contrast("noisy − plain BatchNorm, both at plain BatchNorm's argmax lr, test accuracy after 5 epochs "
                   "(points); the noise has mean scale 1 and mean shift 0", -1),
          (Condition("noisy at its own lr", "lr grid", "noisy BatchNorm at its own argmax lr"),
           Condition("the tutorial's lr", "lr grid", "both at the tutorial's lr")),
          seen_before="−0.5 [−0.8, −0.2] at lr 0.001 (no effect); −1.8 ± 0.5 at lr 0.1 (holds)",
          disagreement="Santurkar et al. found noisy BatchNorm about as good as BatchNorm; where the primary "
                       "holds, the study disagrees with them there. Their noise has non-zero mean and non-unit "
                       "variance; the study's has mean scale 1 and mean shift 0, so that training and evaluation "
                       "agree in mean (any variance mismatch is stated)"),
    Claim("7.2", "At the same weights and lr, BatchNorm shrinks the gradient change caused by the earlier layers' "
                 "step",
          "We refer to this phenomenon as internal covariate shift, and address the problem by normalizing layer "
          "inputs.", True, "Ioffe & Szegedy 2015, abstract; measure of Santurkar et al. 2018", "deep CNNs",
          "same point",
          contrast("‖G′ − G‖ / ‖G‖ of the second Linear, BatchNorm twin / baseline, at the same point", -1, 1.25,
                   QUARTER, ratio=True, unit="×"),
          (Condition("between trained networks", "lr grid", "a trained BatchNorm network against a trained "
                                                            "baseline, at each grid lr, a row each"),),
          seen_before="the twin: 0.147×; trained networks: 19× at lr 0.001, 0.44× and 0.53× at lr 0.3 and 0.5",
          disagreement="Santurkar et al. found that models with BatchNorm have similar, or even worse, internal "
                       "covariate shift during training (the trained-network rows measure that case)"),
    Claim("7.3", "At the same weights, BatchNorm lowers the curvature (top Hessian eigenvalue)",
          "Instead, we uncover a more fundamental impact of BatchNorm on the training process: it makes the "
          "optimization landscape significantly smoother.", True, "Santurkar et al. 2018, abstract",
          "VGG on CIFAR-10 and deep linear networks", "same point",
          contrast("λ_max of the Hessian in the Linear weights, BatchNorm twin / baseline, at the same point", -1,
                   1.25, QUARTER, ratio=True, unit="×"),
          (Condition("during training", "lr grid", "twins of the same baselines after 1 and 3 of the 5 epochs, a "
                                                  "row each"),),
          seen_before="0.31× at the end of training (one checkpoint of six)"),
)

LINEAR_SCALING = Condition("linear scaling rule", "batch size", "BatchNorm at batch 8 at its tuned lr at batch 64 "
                                                               "× 8 / 64 (Goyal et al. 2017), no warm-up (run at "
                                                               "batch 8 only, for the budget)")
BATCHES = (32, 64, 128, 512)   # the sensitivity batch sizes of 8.1 (batch 8 is the primary's)

CLAIMS += (
    Claim("8.1", "BatchNorm's lead over the baseline holds at every batch size",
          "the tutorial family's MNIST and Keras versions sweep the batch size and read BatchNorm's lead at each",
          False, "the tutorial family's MNIST and Keras notebooks", "MNIST, one run per batch size", "batch size",
          contrast("BatchNorm − baseline at batch 8 (where BatchNorm's statistics are noisiest), each at its lr "
                   "tuned at that batch size, test accuracy after 5 epochs (points)", +1),
          tuple(Condition(f"batch {b}", "batch size", f"the same contrast at batch {b}") for b in BATCHES)
          + (LINEAR_SCALING,),
          seen_before="never run in this form; an earlier round saw BatchNorm ahead at batch 64",
          disagreement="the claim holds at every batch size only if the primary holds and every batch-size row "
                       "holds too (a verdict per batch size); the rows share one training set and one epoch count, "
                       "so batch 512 takes 100 steps and batch 8 takes 6,400"),
    Claim("8.1", "BatchNorm degrades at small batches, GroupNorm does not",
          "BN's error increases rapidly when the batch size becomes smaller, caused by inaccurate batch statistics "
          "estimation.", True, "Wu & He 2018, abstract (and Ioffe 2017, abstract)", "ResNet-50 on ImageNet, "
          "batches of 2 to 32 images per GPU", "batch size",
          contrast("[BatchNorm(8) − BatchNorm(64)] − [GroupNorm(8) − GroupNorm(64)], each at its lr tuned per batch "
                   "size, test accuracy after 5 epochs (points)", -1),
          (Condition("LayerNorm", "batch size", "LayerNorm in place of GroupNorm"),
           Condition("linear scaling rule", "batch size", "BatchNorm(8) at its batch-64 lr × 8 / 64, no warm-up")),
          seen_before="GroupNorm tuned 1.1 ± 0.4 below BatchNorm at batch 64 (an earlier round); no small batches",
          disagreement="the source's batches hold images of a CNN, whose statistics pool over many pixels; here a "
                       "batch of 8 gives each unit 8 values, and the source's epochs are fixed as ours are"),
    Claim("8.2", "Ghost BatchNorm beats full-batch statistics at a large batch",
          "[...] a novel algorithm named \"Ghost Batch Normalization\" which enables significant decrease in the "
          "generalization gap without increasing the number of updates.", True, "Hoffer, Hubara & Soudry 2017, "
          "abstract", "large-batch training of CNNs on CIFAR and ImageNet, ghost batches of 128", "batch size",
          contrast("ghost BatchNorm (ghost batches of 32) − BatchNorm, both at batch 512, each at its own tuned lr, "
                   "test accuracy after 5 epochs (points)", +1),
          (Condition("ghost batches of 16", "batch size", "ghost batches of 16"),
           Condition("ghost batches of 64", "batch size", "ghost batches of 64")),
          seen_before="never run",
          disagreement="the running statistics move once per batch by the mean of the ghost groups' means and "
                       "unbiased variances (the convention stated in bnstudy/norms.py; evaluation uses them as "
                       "BatchNorm does); the source also trains longer and raises the lr, which this regime does not"),
    Claim("8.3", "BatchNorm beats GroupNorm, which uses no batch statistics",
          "the reference README lists GroupNorm among the normalisations to explore", False,
          "the tutorial's README (further exploration)", "any", "lr grid",
          contrast("BatchNorm − GroupNorm (4 groups per layer), each at its argmax lr, test accuracy after 5 epochs "
                   "(points)", +1), (ONE_SE,),
          seen_before="tuned 1.1 ± 0.4 below BatchNorm (an earlier round, another regime)"),
    Claim("8.4", "Dropout adds less to a BatchNorm network than to the baseline",
          "It also acts as a regularizer, in some cases eliminating the need for Dropout.", True,
          "Ioffe & Szegedy 2015, abstract", "Inception on ImageNet", "overfitting",
          contrast("[BatchNorm + dropout − BatchNorm] − [baseline + dropout − baseline], dropout 0.5 after each "
                   "hidden ReLU, each model at its lr tuned in this regime, test accuracy after 100 epochs (points)",
                   -1),
          (Condition("dropout before BatchNorm", "overfitting", "dropout 0.5 between each hidden Linear and its "
                                                             "BatchNorm, where Li et al. 2019 find a variance shift"),),
          seen_before="never run with dropout; BatchNorm's own lead in this regime was cut from the last round",
          disagreement="rate 0.5 after the ReLU is Srivastava et al. 2014's rate for hidden units and the usual "
                       "place; the source's network has no dropout to compare, so the claim is read as the gain "
                       "dropout still adds"),
    Claim("8.5", "BatchNorm after the ReLU beats BatchNorm before it",
          "the tutorial family's Keras version applies the step right before (or right after) the nonlinearity; its "
          "MNIST version normalises the output of a previous activation layer", False,
          "the tutorial family's Keras and MNIST notebooks", "MNIST", "lr grid",
          contrast("BatchNorm after the ReLU − BatchNorm before it, each at its argmax lr, test accuracy after 5 "
                   "epochs (points)", +1),
          (ONE_SE, Condition("the tutorial's lr", "lr grid", "both at the tutorial's lr")),
          seen_before="+2.5 ± 0.8 at lr 0.001 and −1.6 ± 0.3 at the best lr (an earlier round): expect depends on",
          disagreement="the source says either place works: its reading of this row is no effect that matters, "
                       "and holds or the opposite holds would contradict it"),
    Claim("8.6", "The tutorial's gap transfers to the wider MNIST network",
          "the tutorial's comparison at its lr, made on the family's MNIST network", False,
          "the tutorial family's MNIST notebook (784 → 256 → 128 → 10)", "MNIST, SGD with momentum", "wide",
          contrast("BatchNorm − baseline, 784 → 256 → 128 → 10, both at the tutorial's lr, plain SGD, test accuracy "
                   "after 5 epochs (points)", +1),
          (Condition("momentum 0.9", "wide", "SGD with momentum 0.9, both at the tutorial's lr"),
           Condition("the reference network", "batch size", "784 → 64 → 32 → 10 at the tutorial's lr, plain SGD")),
          seen_before="never run in this regime",
          disagreement="transfers means the same verdict on the plain-SGD and the momentum rows"),
    Claim("8.6", "The tuned lead transfers to the wider MNIST network",
          "the study's tuned comparison, made on the family's MNIST network", False,
          "the tutorial family's MNIST notebook (784 → 256 → 128 → 10)", "MNIST, SGD with momentum", "wide",
          contrast("BatchNorm − baseline, 784 → 256 → 128 → 10, each at its argmax lr, plain SGD, test accuracy "
                   "after 5 epochs (points)", +1),
          (Condition("momentum 0.9", "wide", "SGD with momentum 0.9, each at its argmax lr"),
           Condition("the reference network", "batch size", "784 → 64 → 32 → 10, each at its argmax lr at batch 64")),
          seen_before="never run in this regime",
          disagreement="transfers means the same verdict on the plain-SGD and the momentum rows"),
)

CUT_CONDITIONS = {  # sensitivity conditions registered before, cut from this round for its budget: {claim: what}
    "BatchNorm allows much higher learning rates": "the edge after 5 epochs (5× the bisection's cost)",
    "Precise BatchNorm statistics beat the running averages (EMA)": "after 20 epochs at a constant lr and after 20 "
                                                                    "epochs of a cosine schedule (the long regime)",
}
CUT_CLAIMS = {  # claims the issue asked for that this round cut for its budget, before the run: {claim: why}
    "Normalising with the statistics of shifted test batches helps (Nado et al. 2020; Schneider et al. 2020)":
        "the first to go when the 13-minute budget binds, as the issue orders; the statistics of test batches are "
        "section 6.1's pitfall on unshifted images",
}

MEASUREMENTS = {  # what the study measures without a verdict: a direction the algebra fixes is no trial
    "3.2": "η / ‖w‖² of the weights that feed BatchNorm over training from step 0, at the chosen lr and above: "
           "under plain SGD a scale-invariant weight's norm can only grow (van Laarhoven 2017; Hoffer et al. 2018; "
           "Arora et al. 2019), so the effective lr falls by construction; the study shows by how much",
}


def registry_blob():
    """The git blob hash of this file as it is on disk (`git hash-object bnstudy/claims.py`): the results JSON
    records it, so that a reader can tell which registry a run was decided under."""
    data = Path(__file__).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
