"""The registry of normalisations: a variant defined and registered in this file alone, without editing bnstudy/,
trains in the engine exactly as its own nn.Module trains under torch.optim."""
import pytest
import torch
from torch import nn

from bnstudy.engine import train_runs
from bnstudy.models import MLP, Arch, Run, max_state_difference, norm_layers
from bnstudy.norms import NORMS, Norm, ghost_size, register
from bnstudy.results import style


class MeanOnlyBatchNorm1d(nn.Module):
    """Mean-only BatchNorm (Salimans & Kingma, 2016): subtract the batch mean, keep the scale; then γ, β."""

    def __init__(self, num_features, momentum=0.1):
        super().__init__()
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x):
        if self.training:
            mean = x.mean(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
        else:
            mean = self.running_mean
        return (x - mean) * self.weight + self.bias


def mean_only_forward(layer, h, mode):
    """The same for K models at once, feature-major h [K, F, B]: the batch is the last axis."""
    if mode.training:
        mean = h.mean(2)
        with torch.no_grad():
            layer.buffers["running_mean"].lerp_(mean, mode.momentum)
    else:
        mean = layer.buffers["running_mean"]
    return (h - mean[..., None]) * layer.weight[..., None] + layer.bias[..., None]


def mean_only_train(layer, h, mode):
    out = mean_only_forward(layer, h, mode)
    return out, (h - h.mean(2, keepdim=True))


def mean_only_backward(layer, centred, grad):
    """y = (x - mean(x)) γ + β: dx = γ (g - mean(g)), dγ = Σ g (x - mean(x)), dβ = Σ g."""
    g = grad * layer.weight[..., None]
    return g - g.mean(2, keepdim=True), (grad * centred).sum(2), grad.sum(2)


@pytest.fixture(params=["autograd", "hand-derived"])
def mean_only(request):
    """The variant registered for one test: differentiated by the engine's autograd fallback, or by its own backward."""
    hand = request.param == "hand-derived"
    norm = register(Norm("mean_only_batchnorm", "mean-only BatchNorm", "tab:gray",
                         lambda arch, features, layer: MeanOnlyBatchNorm1d(features), mean_only_forward,
                         batch_statistics=True, buffers=("running_mean",),
                         train=mean_only_train if hand else None, backward=mean_only_backward if hand else None))
    yield norm
    del NORMS[norm.name]


def test_a_registered_variant_is_a_model_a_label_and_a_colour(mean_only):
    arch = Arch(norm=mean_only.name)
    assert [type(m) for m in norm_layers(MLP(arch))] == [MeanOnlyBatchNorm1d, MeanOnlyBatchNorm1d]
    assert arch.label == "mean-only BatchNorm" and style(mean_only.name)["color"] == "tab:gray"


def test_a_registered_variant_trains_as_its_module_in_float64(nb, fashion, mean_only):
    """Two epochs, two seeds, momentum and weight decay, beside BatchNorm runs in the same pass; then eval mode."""
    arch = Arch(norm=mean_only.name)
    train = tuple(t[:1280] for t in fashion["train"])
    runs = [Run(1, 0.02, arch=arch), Run(2, 0.05, momentum=0.9, weight_decay=1e-3, arch=arch),
            Run(1, 0.05, momentum=0.5, arch=Arch(norm="batchnorm")), Run(2, 0.05, arch=Arch(norm="batchnorm"))]
    trained = train_runs(runs, {"train": train}, 2, 64, dtype=torch.float64)
    test = tuple(t[:500] for t in fashion["test"])
    with torch.no_grad():
        logits = trained.models.logits(test[0].double())
    for k, (run, stacked) in enumerate(zip(runs, trained.models.to_modules())):
        alone = nb.train_textbook(run.arch, run, train, 2, 64)
        assert max_state_difference(stacked, alone) < 1e-9, run
        with torch.no_grad():   # eval mode: the running mean that both kept
            k_stack = trained.models.order_of_runs.index(k)
            torch.testing.assert_close(logits[k_stack].T, alone.eval()(test[0].double()), rtol=1e-9, atol=1e-9)


def test_ghost_batches_split_a_short_batch_evenly_and_refuse_groups_of_one():
    assert ghost_size(32, 64) == 32 and ghost_size(32, 48) == 16   # a short last batch of 48: groups of 16
    with pytest.raises(ValueError, match="groups of 2 or more"):
        ghost_size(16, 63)   # gcd 1: a group of one sample has no variance
