"""The registry of normalisations: each variant is one entry, and nothing else in the package names a variant.

An entry holds its label and colour, the `nn.Module` it puts after a hidden Linear, its stacked forward for K models
at once, whether it reads the statistics of the batch, and the running buffers the stack keeps for it. Stacked
activations are feature-major, [K, F, B] (models, units, samples). A forward that training should run without
autograd also gives `train` (the forward that keeps what its backward needs) and `backward`; without them the
engine differentiates `forward` with autograd, one layer at a time. `register` adds a variant from outside.

Every normalisation layer here has a learned weight (γ) and bias (β) per unit, as PyTorch's have.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .counters import counter_uniform, feature_major_index, sample_major_index

EPS = 1e-5        # PyTorch's BatchNorm, LayerNorm and GroupNorm default epsilon
MOMENTUM = 0.1    # PyTorch's BatchNorm momentum: running = (1 - momentum) * running + momentum * batch


# ---------------------------------------------------------------------------------------------------------------
# The modules of the variants that PyTorch has no class for

class FrozenBatchNorm1d(nn.Module):
    """BatchNorm whose statistics are taken from the first training batch and then fixed: a data-dependent init.

    After that first batch it is a plain affine map with learned gamma and beta: no batch statistics, no gradient
    through them. The control that separates BatchNorm's rescaling at the start from what it does during training.
    """

    def __init__(self, num_features, eps=EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("var", torch.ones(num_features))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x):
        if self.training and not self.initialised:
            with torch.no_grad():  # statistics as constants: no gradient flows through them
                self.mean.copy_(x.mean(0)), self.var.copy_(x.var(0, unbiased=False)), self.initialised.fill_(True)
        return (x - self.mean) / torch.sqrt(self.var + self.eps) * self.weight + self.bias


def ghost_size(ghost, batch):
    """Samples per ghost batch in a batch of `batch`: gcd(ghost, batch), so that a short last batch splits evenly.
    A ghost batch of one sample has no variance (and no unbiased one), as BatchNorm refuses a batch of one."""
    g = math.gcd(ghost, batch)
    if g < 2:
        raise ValueError(f"ghost batches of {ghost} cannot split a batch of {batch} into groups of 2 or more samples")
    return g


class GhostBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with statistics over consecutive sub-batches of `ghost` samples (Hoffer et al., 2017).

    The running statistics move once per batch, by the mean over sub-batches of their means and unbiased variances.
    A short last batch uses sub-batches of gcd(ghost, its size) samples, which must be at least 2.
    """

    def __init__(self, num_features, ghost):
        super().__init__(num_features)
        self.ghost = ghost

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        g = ghost_size(self.ghost, len(x))
        groups = x.view(len(x) // g, g, -1)
        mean, var = groups.mean(1, keepdim=True), groups.var(1, unbiased=False, keepdim=True)
        with torch.no_grad():
            self.running_mean.lerp_(mean.mean((0, 1)), self.momentum)
            self.running_var.lerp_((var * (g / (g - 1))).mean((0, 1)), self.momentum)
            self.num_batches_tracked += 1
        return ((groups - mean) / torch.sqrt(var + self.eps)).view_as(x) * self.weight + self.bias


def bn_noise(seed, step, stream, level, units, samples):
    """Santurkar et al.'s "noisy BatchNorm" perturbation, as (scale, shift): the layer outputs x * scale + shift.

    Every step, every unit j gets a new noise distribution: a shift centred on mu_j ~ U(-level, level) and a scale
    centred on nu_j ~ U(1 - level / 2, 1 + level / 2); every sample then draws its own shift and scale around
    those, each uniform of width 1. So each unit's distribution moves by about one standard deviation at every
    step, while the scale averages 1 and the shift 0: training and evaluation (no noise) agree in mean. They do not
    agree in variance: at level 1 a unit-variance output has a second moment of about 1.58 in training (scale
    variance 1/6, shift variance 5/12), 1 at evaluation. `units` and
    `samples` number the units (f) and the (sample, unit) pairs (b * F + f), shaped to broadcast against the
    layer's output.
    """
    lead = max(torch.as_tensor(seed).dim(), samples.dim())  # streams stacked in front of seed and index dims
    pair = lambda first: (4 * stream + first + torch.arange(2, device=samples.device)).view(2, *[1] * lead)  # noqa
    mu, nu = counter_uniform(seed, step, pair(0), units)          # streams 4s, 4s + 1: per unit
    shift, scale = counter_uniform(seed, step, pair(2), samples)  # streams 4s + 2, 4s + 3: per (sample, unit)
    return 1 + level * (nu - 0.5) + (scale - 0.5), level * (2 * mu - 1) + (shift - 0.5)


class NoisyBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d followed, in training, by `bn_noise`: normalised, then deliberately shifted every step."""

    def __init__(self, num_features, level, stream):
        super().__init__(num_features)
        self.level, self.stream, self.seed, self.step = level, stream, 0, 0  # the training loop sets seed and step

    def forward(self, x):
        y = super().forward(x)
        if not self.training:
            return y
        scale, shift = bn_noise(self.seed, self.step, self.stream, self.level,
                                *sample_major_index(len(x), x.shape[1], x.device))
        return y * scale.to(y.dtype) + shift.to(y.dtype)


# ---------------------------------------------------------------------------------------------------------------
# What a stacked forward is given

@dataclass
class Layer:
    """Hidden layer `index`'s normalisation for the Kb models of one architecture: weight and bias [Kb, F], the
    running buffers by name [Kb, ...], Python-side flags (no device read needed to consult them), and the arch."""
    index: int
    weight: torch.Tensor
    bias: torch.Tensor
    buffers: dict
    flags: dict
    arch: object


@dataclass
class Mode:
    """How a forward runs: in training (batch statistics) or not, at which step, with which running-average
    momentum, and `draw(fn)`: counter-based draws per model (fn(seeds [Kb, 1, 1]) returns [Kb, ...] tensors)."""
    training: bool
    step: int = 0
    momentum: float = MOMENTUM
    draw: Optional[Callable] = None


def channels(h):
    """[K, F, B] as one input [1, K * F, B] of PyTorch's BatchNorm: the K models' units are its K * F channels."""
    K, F_, B = h.shape
    return h.reshape(1, K * F_, B)


def flat(t):
    return t.reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm (before or after the ReLU), and noisy BatchNorm on top of it

def batchnorm_forward(layer, h, mode):
    out = F.batch_norm(channels(h), flat(layer.buffers["running_mean"]), flat(layer.buffers["running_var"]),
                       flat(layer.weight), flat(layer.bias), mode.training, mode.momentum, EPS)
    return out.view(h.shape)


def batchnorm_train(layer, h, mode):
    """PyTorch's own kernel; it updates the running statistics in place and returns the batch's mean and 1 / std."""
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        channels(h), flat(layer.weight), flat(layer.bias), flat(layer.buffers["running_mean"]),
        flat(layer.buffers["running_var"]), True, mode.momentum, EPS)
    return out.view(h.shape), (h, mean, invstd)


def batchnorm_backward(layer, saved, grad):
    h, mean, invstd = saved
    dh, dw, db = torch.ops.aten.native_batch_norm_backward(
        channels(grad), channels(h), flat(layer.weight), None, None, mean, invstd, True, EPS, [True, True, True])
    return dh.view(h.shape), dw.view(layer.weight.shape), db.view(layer.bias.shape)


def noise_of(layer, h, mode):
    """Noisy BatchNorm's (scale, shift) for this step, [Kb, F, B]: drawn in float64 once per seed, cast, repeated."""
    units, samples = feature_major_index(h.shape[1], h.shape[2], h.device)
    return mode.draw(lambda seed: tuple(t.to(h.dtype) for t in bn_noise(seed, mode.step, layer.index,
                                                                        layer.arch.noise, units, samples)))


def noisy_forward(layer, h, mode):
    out = batchnorm_forward(layer, h, mode)
    if not mode.training:
        return out
    scale, shift = noise_of(layer, h, mode)
    return torch.addcmul(shift, out, scale)


def noisy_train(layer, h, mode):
    out, saved = batchnorm_train(layer, h, mode)
    scale, shift = noise_of(layer, h, mode)
    return torch.addcmul(shift, out, scale), (saved, scale)


def noisy_backward(layer, saved, grad):
    saved, scale = saved
    return batchnorm_backward(layer, saved, grad * scale)


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm and GroupNorm: statistics over the units (of a group) of each sample, so sample-major inside

def per_sample(h):
    K, F_, B = h.shape
    return h.transpose(1, 2).reshape(K * B, F_)


def feature_major(x, shape):
    K, F_, B = shape
    return x.view(K, B, F_).transpose(1, 2)


def grouped(groups):
    """The stacked forward, train and backward of a normalisation over `groups(arch)` groups of each sample's
    units: LayerNorm is one group, GroupNorm `arch.groups`."""

    def forward(layer, h, mode):
        out = feature_major(F.group_norm(per_sample(h), groups(layer.arch), eps=EPS), h.shape)
        return torch.addcmul(layer.bias[..., None], out, layer.weight[..., None])

    def train(layer, h, mode):
        x = per_sample(h)
        normalised, mean, rstd = torch.ops.aten.native_group_norm(x, None, None, x.shape[0], x.shape[1], 1,
                                                                  groups(layer.arch), EPS)
        normalised = feature_major(normalised, h.shape)
        return torch.addcmul(layer.bias[..., None], normalised, layer.weight[..., None]), (x, normalised, mean, rstd)

    def backward(layer, saved, grad):
        x, normalised, mean, rstd = saved
        dx, _, _ = torch.ops.aten.native_group_norm_backward(
            per_sample(grad * layer.weight[..., None]), x, mean, rstd, None, x.shape[0], x.shape[1], 1,
            groups(layer.arch), [True, False, False])
        return feature_major(dx, grad.shape).contiguous(), (grad * normalised).sum(2), grad.sum(2)

    return {"forward": forward, "train": train, "backward": backward}


# ---------------------------------------------------------------------------------------------------------------
# Frozen BatchNorm (the statistics of the first batch, then fixed) and ghost BatchNorm (statistics of sub-batches)

def frozen_statistics(layer, h, mode):
    """Take the first training batch's statistics, once; a Python flag says whether they are taken yet."""
    if mode.training and not layer.flags["initialised"]:
        with torch.no_grad():
            layer.buffers["mean"].copy_(h.mean(2)), layer.buffers["var"].copy_(h.var(2, unbiased=False))
            layer.buffers["initialised"].fill_(True)
        layer.flags["initialised"] = True
    return layer.buffers["mean"][..., None], torch.sqrt(layer.buffers["var"][..., None] + EPS)


def frozen_forward(layer, h, mode):
    mean, std = frozen_statistics(layer, h, mode)
    return (h - mean) / std * layer.weight[..., None] + layer.bias[..., None]


def frozen_train(layer, h, mode):
    mean, std = frozen_statistics(layer, h, mode)
    normalised = (h - mean) / std
    return normalised * layer.weight[..., None] + layer.bias[..., None], (normalised, std)


def frozen_backward(layer, saved, grad):
    normalised, std = saved
    return grad * (layer.weight[..., None] / std), (grad * normalised).sum(2), grad.sum(2)


def ghost_forward(layer, h, mode):
    """Training: statistics over consecutive groups of g samples, each (model, unit, group) one channel of PyTorch's
    kernel; the running statistics move by the mean over groups of their means and unbiased variances."""
    if not mode.training:
        return batchnorm_forward(layer, h, mode)
    K, F_, B = h.shape
    g = ghost_size(layer.arch.ghost, B)
    groups = h.reshape(1, K * F_ * (B // g), g)
    with torch.no_grad():
        rows = groups.view(K, F_, B // g, g)
        mean = rows.mean(3)  # two passes: on the CPU torch.var_mean is slow on many short rows
        var = (rows - mean[..., None]).square().mean(3)
        layer.buffers["running_mean"].lerp_(mean.mean(2), mode.momentum)
        layer.buffers["running_var"].lerp_((var * (g / (g - 1))).mean(2), mode.momentum)
    normalised = F.batch_norm(groups, None, None, training=True, eps=EPS).view(K, F_, B)
    return torch.addcmul(layer.bias[..., None], normalised, layer.weight[..., None])


# ---------------------------------------------------------------------------------------------------------------
# The registry

@dataclass(frozen=True)
class Norm:
    """One normalisation. `module(arch, features, layer)` builds its nn.Module; `forward(layer, h, mode)` is the
    stacked forward (differentiable); `train` and `backward` the optional hand-derived pair for training."""
    name: str
    label: str
    color: str
    module: Optional[Callable] = None          # None: no normalisation layer at all
    forward: Optional[Callable] = None
    batch_statistics: bool = False             # one sample's output depends on the rest of its batch
    buffers: tuple = ()                        # the module's running buffers that the stack keeps, by name
    after_relu: bool = False                   # placed after the ReLU instead of between the Linear and the ReLU
    precise: bool = False                      # running mean and variance that precise BatchNorm can recompute
    train: Optional[Callable] = None
    backward: Optional[Callable] = None
    flags: tuple = ()                          # Python-side flags of the stacked layer, with their start values

    @property
    def normalises(self):
        return self.module is not None


NORMS = {}


def register(norm):
    """Add (or replace) a variant; models, the engine and the figures then know it by its name."""
    NORMS[norm.name] = norm
    return norm


BN_BUFFERS = ("running_mean", "running_var")
register(Norm("none", "no normalisation", "tab:blue"))
register(Norm("batchnorm", "BatchNorm", "tab:orange", lambda arch, f, i: nn.BatchNorm1d(f), batchnorm_forward,
              True, BN_BUFFERS, precise=True, train=batchnorm_train, backward=batchnorm_backward))
register(Norm("batchnorm_after_relu", "BatchNorm after ReLU", "tab:brown", lambda arch, f, i: nn.BatchNorm1d(f),
              batchnorm_forward, True, BN_BUFFERS, after_relu=True, precise=True, train=batchnorm_train,
              backward=batchnorm_backward))
register(Norm("layernorm", "LayerNorm", "tab:purple", lambda arch, f, i: nn.LayerNorm(f),
              **grouped(lambda arch: 1)))
register(Norm("groupnorm", "GroupNorm", "tab:green", lambda arch, f, i: nn.GroupNorm(arch.groups, f),
              **grouped(lambda arch: arch.groups)))
register(Norm("frozen_batchnorm", "frozen BatchNorm", "tab:olive", lambda arch, f, i: FrozenBatchNorm1d(f),
              frozen_forward, buffers=("mean", "var", "initialised"), train=frozen_train, backward=frozen_backward,
              flags=(("initialised", False),)))
register(Norm("ghost_batchnorm", "ghost BatchNorm", "tab:pink", lambda arch, f, i: GhostBatchNorm1d(f, arch.ghost),
              ghost_forward, True, BN_BUFFERS))
register(Norm("noisy_batchnorm", "noisy BatchNorm", "tab:red",
              lambda arch, f, i: NoisyBatchNorm1d(f, arch.noise, stream=i), noisy_forward, True, BN_BUFFERS,
              train=noisy_train, backward=noisy_backward))


def norm_of(arch):
    """The registry entry of an architecture's normalisation, or a clear error for an unknown name."""
    try:
        return NORMS[arch.norm]
    except KeyError:
        raise ValueError(f"unknown normalisation {arch.norm!r}: use one of {tuple(NORMS)}") from None
