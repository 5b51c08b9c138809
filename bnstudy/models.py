"""Every model of the study: one generic `MLP` with its normalisation variants, and how it is initialised.

`MLP(Arch())` and `MLP(Arch(norm="batchnorm"))` are the tutorial's two models, layer for layer. The variants that
need modules of their own: frozen BatchNorm (statistics of the first batch, then fixed), ghost BatchNorm
(statistics over sub-batches, Hoffer et al. 2017) and noisy BatchNorm (distributions shifted at every step,
Santurkar et al. 2018). Dropout masks and the noise come from a counter-based generator, so a model trained alone
and the same model inside a stack of K draw the same numbers.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn


BN_EPS = 1e-5      # PyTorch's BatchNorm, LayerNorm and GroupNorm default epsilon
DROPOUT_STREAM = 100  # counter stream of hidden layer i's dropout masks: DROPOUT_STREAM + i (noise uses streams < 100)
M32 = 0xFFFFFFFF  # the counter-based random numbers below work in 32-bit words


def as_words(values):
    """Integers in [0, 2**32) (an int64 tensor) as an int32 tensor of the same 32-bit patterns (larger ones wrap)."""
    return torch.where(values > 0x7FFFFFFF, values - 2**32, values).to(torch.int32)


def fmix32(h):
    """MurmurHash3's 32-bit finaliser on an int32 tensor of 32-bit words (bit patterns): a cheap, well-mixed bijection.

    int32 products wrap modulo 2**32 as the words' do, and >> on int32 copies the sign bit, so a mask makes it the
    logical shift the hash wants. Four bytes a word instead of eight: less memory to stream through per draw.
    """
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * (0x85EBCA6B - 2**32)  # the constants as signed 32-bit words
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * (0xC2B2AE35 - 2**32)
    return h ^ ((h >> 16) & 0xFFFF)


def counter_uniform(seed, step, stream, index):
    """Uniform numbers in [0, 1) that are a function of (seed, step, stream, index) alone.

    Like Philox, a counter-based generator: any path (one model, K stacked models, CPU or GPU) that asks for the same
    (seed, step, stream, index) gets the same number, so dropout masks and noise can be checked across paths.
    `seed` and `stream` may be tensors (one seed per model, several streams at once); `index` is an int64 tensor of
    values below 2**32; all three broadcast against each other.
    """
    seed = torch.as_tensor(seed, dtype=torch.int64, device=index.device)
    key = fmix32(as_words((seed * 0x9E3779B1 + step * 0x7F4A7C15 + stream * 0x632BE5AB) & M32))
    return (fmix32(key ^ as_words(index)).to(torch.int64) & M32).to(torch.float64).div(2.0**32)  # unsigned / 2**32


class CounterDropout(nn.Module):
    """Inverted dropout whose mask comes from `counter_uniform`, keyed by the model's seed and training step."""

    def __init__(self, p, stream):
        super().__init__()
        self.p, self.stream, self.seed, self.step = p, stream, 0, 0  # the training loop sets seed and step

    def forward(self, x):
        if not self.training:
            return x
        index = torch.arange(x.numel(), device=x.device).view_as(x)  # sample-major, as the stacked path counts
        keep = counter_uniform(self.seed, self.step, self.stream, index) >= self.p
        return x * (keep.to(x.dtype) / (1 - self.p))


class FrozenBatchNorm1d(nn.Module):
    """BatchNorm whose statistics are taken from the first training batch and then fixed: a data-dependent init.

    After that first batch it is a plain affine map with learned gamma and beta: no batch statistics, no gradient
    through them. The control that separates BatchNorm's rescaling at the start from what it does during training.
    """

    def __init__(self, num_features, eps=BN_EPS):
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


class GhostBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with statistics over consecutive sub-batches of `ghost` samples (Hoffer et al., 2017).

    The running statistics move once per batch, by the mean over sub-batches of their means and unbiased variances.
    A short last batch uses the largest sub-batch size that divides it.
    """

    def __init__(self, num_features, ghost):
        super().__init__(num_features)
        self.ghost = ghost

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        g = math.gcd(self.ghost, len(x))
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
    centred on nu_j ~ U(1, 1 + level); every sample then draws its own shift and scale around those, each uniform
    of width 1. So each unit's distribution moves by about one standard deviation at every step. `units` and
    `samples` number the units (f) and the (sample, unit) pairs (b * F + f), shaped to broadcast against the
    layer's output.
    """
    lead = max(torch.as_tensor(seed).dim(), samples.dim())  # streams stacked in front of seed and index dims
    pair = lambda first: (4 * stream + first + torch.arange(2, device=samples.device)).view(2, *[1] * lead)  # noqa
    mu, nu = counter_uniform(seed, step, pair(0), units)          # streams 4s, 4s + 1: per unit
    shift, scale = counter_uniform(seed, step, pair(2), samples)  # streams 4s + 2, 4s + 3: per (sample, unit)
    return 1 + level * nu + (scale - 0.5), level * (2 * mu - 1) + (shift - 0.5)


class NoisyBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d followed, in training, by `bn_noise`: normalised, then deliberately shifted every step."""

    def __init__(self, num_features, level, stream):
        super().__init__(num_features)
        self.level, self.stream, self.seed, self.step = level, stream, 0, 0  # the training loop sets seed and step

    def forward(self, x):
        y = super().forward(x)
        if not self.training:
            return y
        units = torch.arange(x.shape[1], device=x.device)
        samples = torch.arange(len(x), device=x.device)[:, None] * x.shape[1] + units  # [B, F]: b * F + f
        scale, shift = bn_noise(self.seed, self.step, self.stream, self.level, units, samples)
        return y * scale.to(y.dtype) + shift.to(y.dtype)


NORMS = ("none", "batchnorm", "batchnorm_after_relu", "layernorm", "groupnorm", "frozen_batchnorm",
         "ghost_batchnorm", "noisy_batchnorm")
NORM_LABELS = {"none": "no normalisation", "batchnorm": "BatchNorm", "batchnorm_after_relu": "BatchNorm after ReLU",
               "layernorm": "LayerNorm", "groupnorm": "GroupNorm", "frozen_batchnorm": "frozen BatchNorm",
               "ghost_batchnorm": "ghost BatchNorm", "noisy_batchnorm": "noisy BatchNorm"}  # labels come from values


@dataclass(frozen=True)
class Arch:
    """What every model of one stacked pass shares: its shape, its normalisation and its inputs."""
    hidden: tuple = (64, 32)   # widths of the hidden layers: the reference is (64, 32); 1 to 16 layers work
    norm: str = "none"         # one of NORMS; all but "batchnorm_after_relu" sit between a Linear and its ReLU
    standardize: bool = False  # inputs as (x - mean) / std, with the training split's pixel mean and std
    groups: int = 4            # GroupNorm: groups of units per layer
    ghost: int = 16            # ghost BatchNorm: samples per statistics group
    noise: float = 1.0         # noisy BatchNorm: how far each unit's noise distribution moves per step


def norm_layer(arch, features, stream):
    """The normalisation module that `arch.norm` puts after a hidden Linear of `features` units."""
    return {"batchnorm": lambda: nn.BatchNorm1d(features),
            "layernorm": lambda: nn.LayerNorm(features),
            "groupnorm": lambda: nn.GroupNorm(arch.groups, features),
            "frozen_batchnorm": lambda: FrozenBatchNorm1d(features),
            "ghost_batchnorm": lambda: GhostBatchNorm1d(features, arch.ghost),
            "noisy_batchnorm": lambda: NoisyBatchNorm1d(features, arch.noise, stream)}[arch.norm]()


class MLP(nn.Module):
    """784 -> hidden widths -> 10 with ReLU, a normalisation per hidden layer (`arch.norm`) and optional dropout.

    MLP(Arch()) is the reference baseline and MLP(Arch(norm="batchnorm")) the reference BatchNorm model, layer for
    layer. bnstudy.engine's Stack is checked against this module, trained by torch.optim.
    """

    def __init__(self, arch=Arch(), dropout=0.0):
        super().__init__()
        if arch.norm not in NORMS:
            raise ValueError(f"unknown normalisation {arch.norm!r}: use one of {NORMS}")
        widths, layers = (784, *arch.hidden), []
        for i, (f_in, f_out) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(f_in, f_out))
            if arch.norm not in ("none", "batchnorm_after_relu"):
                layers.append(norm_layer(arch, f_out, stream=i))
            layers.append(nn.ReLU())
            if arch.norm == "batchnorm_after_relu":
                layers.append(nn.BatchNorm1d(f_out))
            if dropout:
                layers.append(CounterDropout(dropout, stream=DROPOUT_STREAM + i))
        layers.append(nn.Linear(widths[-1], 10))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x.flatten(1))


def norm_layers(model):
    """An MLP's normalisation layers, input side first (BatchNorm, LayerNorm, ... whichever `arch.norm` put there)."""
    return [m for m in model.layers if not isinstance(m, (nn.Linear, nn.ReLU, CounterDropout))]


def init_parameters(model, generator, scale=1.0, he=False):
    """PyTorch's default Linear init (or He's), drawn from `generator`, times `scale`: reproducible on any device."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            if he:  # He et al. (2015): normal with std sqrt(2 / fan_in), zero bias
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                nn.init.zeros_(layer.bias)
            else:   # nn.Linear's own reset_parameters, with our generator
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            with torch.no_grad():
                layer.weight.mul_(scale), layer.bias.mul_(scale)
    return model


def make_model(model_class, seed, device, init_scale=1.0, he_init=False):
    """A freshly initialised model on `device`, and the CPU generator that will shuffle its batches.

    Weights and batch order come from two generators seeded alike, so models that share a seed share both the batch
    order and, wherever their Linear layers match, the initial weights, whatever else differs between them.
    """
    model = init_parameters(model_class(), torch.Generator().manual_seed(seed), init_scale, he_init)
    return model.to(device), torch.Generator().manual_seed(seed)  # CPU generators: the same draws on every device


def count_parameters(model):
    """How many numbers training can change (BatchNorm's running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters())


def max_state_difference(model_a, model_b):
    """The largest absolute difference between any parameter or buffer of two same-shaped models."""
    a, b = model_a.state_dict(), model_b.state_dict()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
