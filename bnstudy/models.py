"""Every model of the study: one generic `MLP` with a normalisation from the registry, and how it is initialised.

`MLP(Arch())` and `MLP(Arch(norm="batchnorm"))` are the tutorial's two models, layer for layer. An `Arch` is what
models of one architecture share; a `Run` is what each trained model has of its own (its seed, its optimiser
settings, its init). Dropout masks come from the counter-based generator of `counters`, so a model trained alone
and the same model inside a stack of K draw the same masks.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from .counters import DROPOUT_STREAM, counter_uniform
from .norms import norm_of


@dataclass(frozen=True)
class Arch:
    """An architecture: its shape, its normalisation (a name in `norms.NORMS`) and its inputs."""
    hidden: tuple = (64, 32)   # widths of the hidden layers: the reference is (64, 32); 1 to 16 layers work
    norm: str = "none"         # where it sits is the registry's business (between a Linear and its ReLU, or after)
    standardize: bool = False  # inputs as (x - mean) / std, with the training split's pixel mean and std
    groups: int = 4            # GroupNorm: groups of units per layer
    ghost: int = 16            # ghost BatchNorm: samples per statistics group
    noise: float = 1.0         # noisy BatchNorm: how far each unit's noise distribution moves per step
    dropout_before_norm: bool = False  # a Run's dropout between each hidden Linear and its normalisation (where Li
                                       # et al. 2019 find a variance shift) instead of after the ReLU

    @property
    def label(self):
        return norm_of(self).label


@dataclass(frozen=True)
class Run:
    """One trained model: its architecture and what it has of its own. Runs with the same seed share batch order and,
    where their Linear layers match, their initial weights."""
    seed: int
    lr: float = 0.001
    momentum: float = 0.0      # SGD only, PyTorch's convention: buf = momentum * buf + grad; 0 is plain SGD
    weight_decay: float = 0.0  # L2, added to the gradient as torch.optim does
    dropout: float = 0.0       # after every hidden ReLU (and after its normalisation, if that sits after the ReLU);
                               # with arch.dropout_before_norm, between each hidden Linear and its normalisation
    init_scale: float = 1.0    # multiplies the default init of every Linear, weights and biases
    he_init: bool = False      # He init (kaiming_normal_, fan_in, relu) with zero biases instead of the default
    arch: Arch = Arch()


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


class MLP(nn.Module):
    """784 -> hidden widths -> 10 with ReLU, the normalisation `arch.norm` per hidden layer, and optional dropout.

    MLP(Arch()) is the reference baseline and MLP(Arch(norm="batchnorm")) the reference BatchNorm model, layer for
    layer. The stacked engine is checked against this module, trained by torch.optim.
    """

    def __init__(self, arch=Arch(), dropout=0.0):
        super().__init__()
        norm, widths, layers = norm_of(arch), (784, *arch.hidden), []
        if arch.dropout_before_norm and not (norm.normalises and not norm.after_relu):
            raise ValueError("dropout before the normalisation needs a normalisation between the Linear and the ReLU")
        for i, (f_in, f_out) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(f_in, f_out))
            if dropout and arch.dropout_before_norm:
                layers.append(CounterDropout(dropout, stream=DROPOUT_STREAM + i))
            block = [nn.ReLU()] + ([norm.module(arch, f_out, i)] if norm.normalises else [])
            layers += block if norm.after_relu else block[::-1]
            if dropout and not arch.dropout_before_norm:
                layers.append(CounterDropout(dropout, stream=DROPOUT_STREAM + i))
        layers.append(nn.Linear(widths[-1], 10))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x.flatten(1))


def linear_layers(model):
    return [m for m in model.layers if isinstance(m, nn.Linear)]


def norm_layers(model):
    """An MLP's normalisation layers, input side first (whichever module its registry entry put there)."""
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


def model_of(run, device="cpu"):
    """The nn.Module of a Run, freshly initialised from its seed (and the generator of its batch order)."""
    return make_model(lambda: MLP(run.arch, run.dropout), run.seed, device, run.init_scale, run.he_init)


def count_parameters(model):
    """How many numbers training can change (BatchNorm's running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters())


def max_state_difference(model_a, model_b):
    """The largest absolute difference between any parameter or buffer of two same-shaped models."""
    a, b = model_a.state_dict(), model_b.state_dict()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
