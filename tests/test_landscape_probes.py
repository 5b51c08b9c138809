"""Section 7's probes of trained models: checkpoints, the BatchNorm twin, curvature and gradient-shift measures."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnstudy.engine import train_runs
from bnstudy.models import Arch, Run
from bnstudy.stack import StackedMLP
from bnstudy.probes import batchnorm_twin, covariate_shift_of_gradients, hessian_top_eigenvalue, weight_row_norms


def small_data(seed=0, n=256, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def trained():
    """Two seeds × two rates of the baseline and of BatchNorm, float64, with checkpoints at steps 0, 2 and 4."""
    X, y = small_data()
    return {norm: train_runs([Run(s, lr, arch=Arch(norm=norm)) for s in (3, 4) for lr in (0.05, 0.2)],
                             {"train": (X, y)}, 1, 64, dtype=torch.float64, snapshot_at={0, 2, 4})
            for norm in ("none", "batchnorm")}


def test_checkpoints_are_frozen_copies(trained):
    pass_ = trained["batchnorm"]
    assert sorted(pass_.snapshots) == [0, 2, 4]  # 4 is the last step: saved after training
    final, live = pass_.snapshots[4], pass_.models
    for mine, theirs in zip(final.parameters(), live.parameters()):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()
    untrained = StackedMLP(live.runs, "cpu", torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(pass_.snapshots[0].parameters(), untrained.parameters()))
    part = final.snapshot(final.positions(lambda run: run.lr == 0.2))     # the runs at one lr, seed by seed
    assert [r.lr for r in part.runs] == [0.2, 0.2] and [r.seed for r in part.runs] == [3, 4]
    X, y = small_data(1, 100)
    with torch.no_grad():
        torch.testing.assert_close(part.batch_loss(X, y), final.batch_loss(X, y)[[1, 3]])


def test_batchnorm_twin_computes_the_same_function_on_its_batch(trained):
    base = trained["none"].snapshots[4]
    X, y = small_data(2, 128)
    twin = batchnorm_twin(base, X)
    with torch.no_grad():
        torch.testing.assert_close(twin.batch_loss(X, y), base.batch_loss(X, y), rtol=1e-12, atol=1e-12)
        other = small_data(3, 128)
        assert (twin.batch_loss(*other) - base.batch_loss(*other)).abs().max() > 1e-6  # its own statistics elsewhere
    with pytest.raises(ValueError):
        batchnorm_twin(trained["batchnorm"].models, X)


@pytest.mark.parametrize("step", [0, 4])   # at init BatchNorm's eigenvalue of largest magnitude can be negative
def test_lanczos_finds_the_top_eigenvalue_of_the_exact_hessian(trained, step):
    model = trained["batchnorm"].snapshots[step].snapshot()
    X, y = small_data(4, 200)
    last = [p.requires_grad_() for p in model.linear(len(model.hidden))]   # the output layer: an exact Hessian is 330²
    found = hessian_top_eigenvalue(model, last, (X, y), iterations=120, seed=0)
    grads = torch.autograd.grad(model.batch_loss(X, y).sum(), last, create_graph=True)
    flat = torch.cat([g.reshape(model.K, -1) for g in grads], 1)                 # [K, 330]
    rows = [torch.cat([h.reshape(model.K, -1) for h in torch.autograd.grad(flat[:, j].sum(), last, retain_graph=True)], 1)
            for j in range(flat.shape[1])]
    hessians = torch.stack(rows, 1)                                              # [K, 330, 330], one per model
    top = torch.linalg.eigvalsh(hessians)[:, -1]            # the largest, not the largest in magnitude
    torch.testing.assert_close(found, top, rtol=1e-6, atol=1e-9)


def test_probes_leave_the_checkpoint_where_it_was(trained):
    model = trained["batchnorm"].snapshots[4].snapshot()
    before = [p.detach().clone() for p in model.parameters()]
    X, y = small_data(5, 128)
    relative, cosine = covariate_shift_of_gradients(model, (X, y))
    after = model.parameters()
    assert all(torch.allclose(a, b, rtol=0, atol=1e-15) for a, b in zip(after, before))
    assert relative.shape == cosine.shape == (4, 2)
    assert (relative > 0).all() and (cosine <= 1 + 1e-12).all()


def test_covariate_shift_measure_against_the_textbook_module(trained):
    """Santurkar et al.'s measure for one model, recomputed on its nn.Module with plain autograd."""
    stack = trained["batchnorm"].snapshots[4]
    X, y = small_data(6, 128)
    relative, cosine = covariate_shift_of_gradients(stack.snapshot(), (X, y))
    for k in range(stack.K):
        module = stack.snapshot().to_modules()[k].train()
        lr = stack.runs[k].lr
        linears = [m for m in module.layers if isinstance(m, torch.nn.Linear)]
        layers = list(module.layers)
        params = list(module.parameters())
        grads = dict(zip(params, torch.autograd.grad(F.cross_entropy(module(X), y), params)))
        for i in (1, 2):
            before = [p for m in layers[:layers.index(linears[i])] for p in m.parameters()]
            G = grads[linears[i].weight]
            with torch.no_grad():
                for p in before:
                    p -= lr * grads[p]
            moved = torch.autograd.grad(F.cross_entropy(module(X), y), [linears[i].weight])[0]
            with torch.no_grad():
                for p in before:
                    p += lr * grads[p]
            expected = (moved - G).norm() / G.norm()
            torch.testing.assert_close(relative[k, i - 1], expected, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(cosine[k, i - 1], (G * moved).sum() / (G.norm() * moved.norm()), rtol=1e-9,
                                       atol=1e-12)


def test_weight_row_norms_are_each_models_own(trained):
    """Two seeds × two rates: each run's mean squared row norm of its first Linear, as the run's own nn.Module has
    it, for the trained models and for a snapshot of part of them."""
    models = trained["batchnorm"].models
    modules = models.to_modules()
    expected = [m.layers[0].weight.detach().pow(2).sum(1).mean().item() for m in modules]
    np.testing.assert_allclose(weight_row_norms(models), expected, rtol=1e-12)
    part = models.snapshot(models.positions(lambda run: run.lr == 0.2))
    np.testing.assert_allclose(weight_row_norms(part), expected[1::2], rtol=1e-12)
