"""Oracles for the normalisations and dropout placements of the open questions (section 8), in float64 at the batch
sizes they train with (8 and 512): the stacked engine against networks built here from PyTorch's own pieces
(`F.batch_norm` per ghost group, `nn.GroupNorm`, `nn.BatchNorm1d`, dropout with `nn.Dropout`'s convention and the
engine's mask), trained by `torch.optim.SGD` on the same batches. Nothing here uses the package's modules."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.counters import DROPOUT_STREAM, counter_uniform, sample_major_index
from bnstudy.data import epoch_permutation
from bnstudy.engine import train_runs
from bnstudy.models import Arch, Run, linear_layers, model_of

MOMENTUM = 0.1   # the running statistics' momentum, PyTorch's default


class GhostReference(nn.Module):
    """Ghost BatchNorm from F.batch_norm, one call per ghost group of `ghost` consecutive samples. The stated running
    statistics convention: once per batch, the running mean and variance move by MOMENTUM toward the mean over
    groups of each group's mean and unbiased variance."""

    def __init__(self, features, ghost):
        super().__init__()
        self.ghost, self.weight, self.bias = ghost, nn.Parameter(torch.ones(features)), nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False)
        outs, means, variances = [], [], []
        for group in x.split(self.ghost):
            mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
            outs.append(F.batch_norm(group, mean, var, self.weight, self.bias, training=True, momentum=1.0))
            means.append(mean), variances.append(var)   # momentum 1: the group's mean and unbiased variance
        with torch.no_grad():
            self.running_mean.lerp_(torch.stack(means).mean(0), MOMENTUM)
            self.running_var.lerp_(torch.stack(variances).mean(0), MOMENTUM)
        return torch.cat(outs)


class SameMaskDropout(nn.Dropout):
    """nn.Dropout's convention (zero a unit with probability p, scale the others by 1 / (1 − p); the identity in eval
    mode) with the engine's mask for (seed, step, layer): `test_nn_dropout_has_the_convention_used` checks the
    convention against nn.Dropout itself."""

    def __init__(self, p, seed, layer):
        super().__init__(p)
        self.seed, self.layer, self.step = seed, layer, 0

    def forward(self, x):
        if not self.training:
            return x
        _, index = sample_major_index(*x.shape, x.device)
        keep = counter_uniform(self.seed, self.step, DROPOUT_STREAM + self.layer, index) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


def reference(run):
    """The run's network from PyTorch's pieces, with the run's initial Linear weights."""
    arch, widths, layers = run.arch, (784, *run.arch.hidden), []
    start = linear_layers(model_of(run)[0])
    for i, f in enumerate(widths[1:]):
        layers.append(nn.Linear(widths[i], f))
        drop = [SameMaskDropout(run.dropout, run.seed, i)] if run.dropout else []
        norm = {"batchnorm": lambda: nn.BatchNorm1d(f, momentum=MOMENTUM),
                "groupnorm": lambda: nn.GroupNorm(arch.groups, f),
                "ghost_batchnorm": lambda: GhostReference(f, arch.ghost)}[arch.norm]()
        layers += drop + [norm, nn.ReLU()] if arch.dropout_before_norm else [norm, nn.ReLU()] + drop
    layers.append(nn.Linear(widths[-1], 10))
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for mine, given in zip([m for m in net if isinstance(m, nn.Linear)], start):
            mine.weight.copy_(given.weight), mine.bias.copy_(given.bias)
    return net


def train_reference(run, X, y, epochs, batch):
    net, generator, step = reference(run), torch.Generator().manual_seed(run.seed), 0
    optimizer = torch.optim.SGD(net.parameters(), lr=run.lr)
    for _ in range(epochs):
        for idx in epoch_permutation(len(X), generator).split(batch):
            for m in net:
                if isinstance(m, SameMaskDropout):
                    m.step = step
            optimizer.zero_grad()
            F.cross_entropy(net(X[idx]), y[idx]).backward()
            optimizer.step()
            step += 1
    return net.eval()


CASES = {  # name: (batch, runs); each case trains one pass of the engine
    "ghost BatchNorm, batch 512, ghost batches of 16, 32 and 64": (512, [
        Run(1, 0.5, arch=Arch(norm="ghost_batchnorm", ghost=g)) for g in (16, 32, 64)]),
    "ghost BatchNorm, batch 8, ghost batches of 4": (8, [Run(2, 0.05, arch=Arch(norm="ghost_batchnorm", ghost=4))]),
    "GroupNorm, 4 groups, batch 8 and 512": (None, [Run(3, 0.05, arch=Arch(norm="groupnorm", groups=4))]),
    "dropout 0.5 after the ReLU and before BatchNorm": (None, [
        Run(4, 0.05, dropout=0.5, arch=Arch(norm="batchnorm")),
        Run(4, 0.05, dropout=0.5, arch=Arch(norm="batchnorm", dropout_before_norm=True)),
        Run(5, 0.1, dropout=0.2, arch=Arch(norm="batchnorm", dropout_before_norm=True))]),
}


@pytest.mark.parametrize("batch", [8, 512])
@pytest.mark.parametrize("case", list(CASES))
def test_the_engine_trains_as_pytorchs_own_pieces_in_float64(fashion, case, batch):
    """Two epochs (batch 8: 40 images, 10 steps; batch 512: 1,280, a short last batch of 256), then eval mode:
    every weight, bias, γ, β and running statistic, and the eval-mode logits, agree to 1e-9."""
    given, runs = CASES[case]
    if given not in (None, batch):
        pytest.skip(f"this case trains at batch {given}")
    X, y = (t[:40 if batch == 8 else 1280] for t in fashion["train"])
    X = X.double()
    trained = train_runs(runs, {"train": (X, y)}, 2, batch, dtype=torch.float64)
    test = fashion["test"][0][:300].double()
    with torch.no_grad():
        logits = trained.models.logits(test)
    for k, (run, stacked) in enumerate(zip(runs, trained.models.to_modules())):
        oracle = train_reference(run, X, y, 2, batch)
        mine = {n: t for n, t in stacked.state_dict().items() if "num_batches" not in n}
        theirs = [t for n, t in oracle.state_dict().items() if "num_batches" not in n]
        assert len(mine) == len(theirs), run
        for (name, a), b in zip(mine.items(), theirs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{run}: {name}")
        with torch.no_grad():
            torch.testing.assert_close(logits[trained.models.order_of_runs.index(k)].T, oracle(test), rtol=1e-9,
                                       atol=1e-9)


def test_nn_dropout_has_the_convention_used():
    """nn.Dropout zeroes some units and scales the rest by 1 / (1 − p), and is the identity in eval mode."""
    x = torch.rand(200, 64, dtype=torch.float64) + 0.5
    drop = nn.Dropout(0.5)
    out = drop(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.5)
    assert 0.4 < kept.double().mean() < 0.6
    torch.testing.assert_close(drop.eval()(x), x)


def test_dropout_before_the_normalisation_needs_one_there():
    with pytest.raises(ValueError, match="between the Linear and the ReLU"):
        model_of(Run(1, dropout=0.5, arch=Arch(norm="batchnorm_after_relu", dropout_before_norm=True)))
