"""Measurements on trained (or initial) models: failures, dead units, speed to a target, gradients and curvature.

The landscape probes work on a `StackedMLP`, for all its K models at once, through its accessors: the models share
no parameter, so one Hessian-vector product of their summed losses serves all K.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import MLP, make_model
from .norms import EPS, Mode
from .progress import bar


def diverged(sweep):
    """Runs whose training loss, averaged over any epoch, was not finite or above the loss they started from."""
    loss = sweep["train_loss"]
    return ~np.isfinite(loss).all(-1) | (np.nan_to_num(loss, nan=np.inf).max(-1) > sweep["initial_loss"])


def failed(sweep):
    """Runs that diverged; collapsed (more than half their hidden units dead, never firing, at the end); or ended
    below twice chance (final validation accuracy under 20 %). A sweep that measured no validation split (no
    `val_acc`, or NaN) is judged by the first two alone."""
    val = sweep.get("val_acc")
    at_chance = val[..., -1] < 0.2 if val is not None else False   # NaN < 0.2 is False
    return diverged(sweep) | (sweep["dead"] > 0.5) | at_chance


def largest_stable(sweep, rates):
    """Per seed: the largest rate of the grid up to which no run of the seed failed; half the first rate if it did.

    sweep: a by_rate history, [rates, seeds, ...]; `rates` increasing. A model that never failed gets the grid's
    last rate, a lower bound on its own edge.
    """
    trained = np.cumprod(~failed(sweep), axis=0).astype(bool)         # [rates, seeds]: every rate so far trained
    last = trained.sum(0) - 1
    return np.where(last >= 0, np.asarray(rates, dtype=float)[np.maximum(last, 0)], rates[0] / 2)


def weight_row_norms(models):
    """Per run (in the order of the runs given): the mean over the first Linear's units j of ||w_j||^2, the weights
    into unit j.

    A unit followed by BatchNorm computes the same function for any positive multiple of w_j, so its gradient is
    orthogonal to w_j and scales as 1 / ||w_j||: a step at lr eta turns w_j by about eta / ||w_j||^2, its effective lr
    (van Laarhoven 2017; Hoffer et al. 2018; Arora et al. 2019). eta over this mean is a layer's typical effective
    lr, not the mean of the units' own.
    """
    W, _ = models.linear(0)                                                 # [K, F1, 784]
    return models.per_run(W.detach().pow(2).sum(-1).mean(1))


def dead_fraction(models, X):
    """Per run: the share of hidden units whose ReLU input is <= 0 for every image in X (units that never fire)."""
    captured = []
    with torch.no_grad():
        models.hidden_and_output(models.first_layer(X), Mode(False), relu_inputs=captured)
    return models.per_run(torch.cat([(h <= 0).all(2) for h in captured], 1).double().mean(1))


def steps_to_reach(sweep, rate_index, target):
    """Per seed, the first step at which the probe accuracy reached `target` (NaN if it never did)."""
    acc = sweep["curve_acc"][rate_index]                                    # [seeds, points]
    reached = acc >= target
    return np.where(reached.any(1), sweep["curve_steps"][reached.argmax(1)], np.nan)


def gradient_norms_at_init(arch, seeds, data, he_init=False, progress=None):
    """Per seed, the L2 norm of each Linear's weight gradient at initialisation, on one batch: [seeds, layers]."""
    X, y = data
    norms = []
    with bar(progress, len(seeds), unit="seed", record=progress and f"{progress}: {len(seeds)} seeds") as meter:
        for seed in seeds:
            model, _ = make_model(lambda: MLP(arch), seed, X.device, 1.0, he_init)
            F.cross_entropy(model.train()(X), y).backward()
            norms.append([layer.weight.grad.norm().item() for layer in model.layers if isinstance(layer, nn.Linear)])
            if meter is not None:
                meter.update()
    return np.array(norms)


def accuracy(model, data):
    """Accuracy of one nn.Module on the split `data` = (X, y), in eval mode (running statistics)."""
    X, y = data
    with torch.no_grad():
        return (model.eval()(X).argmax(1) == y).double().mean().item()


def model_dot(K, a, b):
    """Per model, the dot product of two lists of stacked tensors (model k's entries are row k of each): [K]."""
    return sum((x.reshape(K, -1) * y.reshape(K, -1)).sum(1) for x, y in zip(a, b))


def scale_rows(K, tensors, factor):
    """Multiply model k's entries of every stacked tensor by factor[k]."""
    return [(t.reshape(K, -1) * factor[:, None]).view(t.shape) for t in tensors]


def shift_parameters(params, step, sign):
    """params += sign * step, in place and outside autograd (a probe moves the checkpoint, then moves it back)."""
    with torch.no_grad():
        for p, s in zip(params, step):
            p.add_(s, alpha=sign)


def covariate_shift_of_gradients(models, batch, progress=None):
    """Santurkar et al.'s gradient measure of internal covariate shift, for each Linear after the first: G is its
    weight gradient; G' the same after every layer before it took its SGD step (each model at its own lr) on the same
    batch. Returns [K, layers] tensors of the relative change ‖G' − G‖ / ‖G‖ and of the cosine between G and G'."""
    K, params = models.K, models.probe_parameters()
    grads = dict(zip(map(id, params), torch.autograd.grad(models.batch_loss(*batch).sum(), params)))
    relative, cosine, layers = [], [], len(models.hidden)
    with bar(progress, layers, unit="layer", record=progress and f"{progress}: {layers} layers of {K} models") as meter:
        for i in range(1, layers + 1):
            before, (W, _) = models.parameters_before(i), models.linear(i)
            step = scale_rows(K, [grads[id(p)] for p in before], models.lr)
            shift_parameters(before, step, -1)
            (moved,) = torch.autograd.grad(models.batch_loss(*batch).sum(), [W])
            shift_parameters(before, step, +1)
            G = grads[id(W)]
            norms = model_dot(K, [G], [G]).sqrt(), model_dot(K, [moved], [moved]).sqrt()
            relative.append(model_dot(K, [moved - G], [moved - G]).sqrt() / norms[0])
            cosine.append(model_dot(K, [G], [moved]) / (norms[0] * norms[1]))
            if meter is not None:
                meter.update()
    return torch.stack(relative, 1), torch.stack(cosine, 1)


def hessian_top_eigenvalue(models, params, batch, iterations=20, seed=0, progress=None):
    """Per model, λ_max: the largest eigenvalue of the Hessian of its batch loss in `params`, as a [K] tensor.

    Lanczos iteration on Hessian-vector products (double backward), with full reorthogonalisation: after m steps
    the largest eigenvalue of the m × m tridiagonal matrix T approaches λ_max from below, far faster than power
    iteration, and it finds the largest eigenvalue even where a negative one is larger in magnitude. The K models
    share no parameter, so the Hessian of their summed losses is block-diagonal: one product serves all K, each
    model's block of every vector normalised and orthogonalised on its own.
    """
    K = models.K
    grads = torch.autograd.grad(models.batch_loss(*batch).sum(), params, create_graph=True)
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]
    v = scale_rows(K, v, 1 / model_dot(K, v, v).sqrt())
    basis, diagonal, off_diagonal = [], [], []   # the Lanczos tridiagonal matrix T
    with bar(progress, iterations, unit="Lanczos step", record=progress and f"{progress}: {iterations} Lanczos steps "
             f"on {K} models") as meter:
        for _ in range(iterations):
            basis.append(v)
            w = [h.detach() for h in torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)]
            diagonal.append(model_dot(K, w, v))
            for q in basis:                       # Gram-Schmidt against every earlier vector: no spurious copies
                w = [a - b for a, b in zip(w, scale_rows(K, q, model_dot(K, w, q)))]
            off_diagonal.append(model_dot(K, w, w).sqrt())
            v = scale_rows(K, w, 1 / off_diagonal[-1].clamp_min(1e-30))   # an exhausted space (dead network): v = 0
            if meter is not None:
                meter.update()
    T = torch.diag_embed(torch.stack(diagonal, 1)) + torch.diag_embed(torch.stack(off_diagonal[:-1], 1), 1) \
        + torch.diag_embed(torch.stack(off_diagonal[:-1], 1), -1)
    return torch.linalg.eigvalsh(T.double())[:, -1].to(params[0].dtype)


def batchnorm_twin(models, X):
    """The BatchNorm network that computes, on the batch X, exactly what the un-normalised `models` compute: the same
    Linears, and after each hidden Linear a BatchNorm whose γ and β are the batch's own standard deviation
    (√(σ²_B + ε)) and mean, so that on X it undoes its own normalisation. Santurkar et al.'s Theorem 4.1 compares
    the two networks at such a point."""
    if models.normalised:
        raise ValueError("the twin is built from a network without normalisation")
    gamma, beta = [], []
    with torch.no_grad():
        h = models.first_layer(X)                                                    # [K, F, B]
        for i in range(len(models.hidden)):
            var, mean = torch.var_mean(h, 2, unbiased=False)
            gamma.append(torch.sqrt(var + EPS)), beta.append(mean)
            W, b = models.linear(i + 1)
            h = torch.baddbmm(b[..., None], W, torch.relu(h))
    return models.with_norm("batchnorm", gamma, beta)


def band_width(rates, acc, within):
    """Per seed, the width in decades of the band of learning rates whose accuracy lies within `within` points of
    that seed's best on the grid: the contiguous band around the best rate, each end interpolated linearly in log lr
    between the last grid point inside and the first outside (a band that reaches the grid's end stops there).

    rates: the grid, increasing; acc: [rates, seeds] in points (a failed run's NaN counts as 0)."""
    x, widths = np.log10(np.asarray(rates, dtype=float)), []
    for a in np.nan_to_num(np.asarray(acc, dtype=float), nan=0.0).T:
        best = int(np.argmax(a))
        level = a[best] - within
        ends = []
        for direction in (-1, 1):
            i = best
            while 0 <= i + direction < len(a) and a[i + direction] >= level:
                i += direction
            j = i + direction
            if not 0 <= j < len(a):
                ends.append(x[i])   # the band reaches the grid's end
            else:                   # a[i] >= level > a[j]: where the straight line crosses the level
                ends.append(x[i] + (a[i] - level) / (a[i] - a[j]) * (x[j] - x[i]))
        widths.append(ends[1] - ends[0])
    return np.array(widths)
