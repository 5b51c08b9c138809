"""The study's own methods: from-scratch BatchNorm (section 1), sweeps and probes (3-6), the BatchNorm variants."""
import numpy as np
import pytest
import torch
from torch import nn

from bnstudy.engine import train_runs
from bnstudy.models import MLP, Arch, Run, make_model
from bnstudy.norms import FrozenBatchNorm1d, GhostBatchNorm1d, NoisyBatchNorm1d
from bnstudy.probes import dead_fraction, diverged, failed, largest_stable, steps_to_reach
from bnstudy.protocol import Protocol, argmax_pick, by_rate, grid_runs, one_se_pick
from bnstudy.stack import StackedMLP
from bnstudy.stats import fmt_ci, mean_ci, t_quantile


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_from_scratch_batchnorm_matches_torch_in_both_modes(nb, dtype, tol):
    worst = nb.compare_with_torch(steps=6, batch=16, features=8, seed=3, dtype=dtype)
    assert {mode for mode, _ in worst} == {"train", "eval"}
    assert {key for _, key in worst} == {"output", "input grad", "gamma grad", "beta grad", "running mean",
                                         "running var"}
    assert max(worst.values()) < tol, worst


def test_from_scratch_batchnorm_tracks_like_torch(nb):
    ours, theirs = nb.BatchNorm1dFromScratch(4), nn.BatchNorm1d(4)
    assert dict(ours.named_parameters()).keys() == dict(theirs.named_parameters()).keys()
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for module in (ours.double(), theirs.double()):
        module(x)
        module(2 * x + 1)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 2
    torch.testing.assert_close(ours.running_var, theirs.running_var)  # the unbiased variance, as torch keeps it


def test_hand_derived_backward_matches_autograd(nb):
    g = torch.Generator().manual_seed(1)
    x = (2 * torch.randn(20, 6, generator=g, dtype=torch.float64) - 1).requires_grad_()
    gamma = torch.rand(6, generator=g, dtype=torch.float64).requires_grad_()
    beta = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(20, 6, generator=g, dtype=torch.float64)
    nb.batch_norm(x, gamma, beta, None, None, training=True).backward(upstream)
    for ours, autograd in zip(nb.batch_norm_backward(upstream, x.detach(), gamma.detach()),
                              (x.grad, gamma.grad, beta.grad)):
        torch.testing.assert_close(ours, autograd, rtol=1e-10, atol=1e-10)
    # The input gradient is orthogonal to the constant direction and to x_hat: BatchNorm's projection.
    dx = nb.batch_norm_backward(upstream, x.detach(), gamma.detach())[0]
    assert dx.sum(0).abs().max() < 1e-10


def test_batch_norm_on_stacked_models_is_per_model_batchnorm(nb):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, 5, generator=g)                       # K=3 models, a batch of 12, 5 units
    gamma, beta = torch.rand(3, 1, 5, generator=g), torch.randn(3, 1, 5, generator=g)
    mean, var = torch.zeros(3, 1, 5), torch.ones(3, 1, 5)
    out = nb.batch_norm(x, gamma, beta, mean, var, training=True)
    for k in range(3):
        bn = nn.BatchNorm1d(5)
        with torch.no_grad():
            bn.weight.copy_(gamma[k, 0]), bn.bias.copy_(beta[k, 0])
        torch.testing.assert_close(out[k], bn(x[k]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean[k, 0], bn.running_mean)
        torch.testing.assert_close(var[k, 0], bn.running_var)


def test_batch_statistics_forward_is_train_mode_without_side_effects(nb):
    model, _ = make_model(nb.FashionNetworkBatchNorm, 0, "cpu")
    x = torch.rand(32, 784, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = nb.forward_with_batch_statistics(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched
    torch.testing.assert_close(out, model.train()(x))
    single = [nb.forward_with_batch_statistics(model, x[i:i + 1]) for i in range(3)]
    assert torch.equal(single[0], single[1]) and torch.equal(single[1], single[2])  # one image: input is lost


def test_accuracy_with_batch_statistics(nb, fashion):
    trained = train_runs([Run(0, 0.05, arch=Arch(norm="batchnorm"))], {"train": tuple(t[:4096] for t in fashion["train"])},
                         1)
    model = trained.models.to_modules()[0]
    X, y = (t[:2000] for t in fashion["test"])
    whole = (nb.forward_with_batch_statistics(model, X).argmax(1) == y).float().mean().item()
    shuffled = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    by_class = torch.argsort(y, stable=True)
    for order in (torch.arange(2000), shuffled, by_class):  # one batch of everything: the order cannot matter
        assert nb.accuracy_with_batch_statistics(model, (X, y), 2000, order) == pytest.approx(whole)
    predicted = nb.forward_with_batch_statistics(model, X[:1]).argmax(1).item()
    single = nb.accuracy_with_batch_statistics(model, (X, y), 1, shuffled)
    assert single == pytest.approx((y == predicted).float().mean().item())  # one class for every image
    assert nb.accuracy_with_batch_statistics(model, (X, y), 200, by_class) < whole - 0.2
    # batches of 64 do not divide 2,000: the vectorised full batches plus the short one equal a plain loop
    loop = sum((nb.forward_with_batch_statistics(model, X[idx]).argmax(1) == y[idx]).sum().item()
               for idx in shuffled.split(64)) / 2000
    assert nb.accuracy_with_batch_statistics(model, (X, y), 64, shuffled) == pytest.approx(loop)


def test_t_quantile_and_confidence_interval():
    # Student's t table: 12.706 (1 dof), 2.776 (4), 2.045 (29); the normal limit 1.960
    for dof, expected in ((1, 12.706), (4, 2.776), (29, 2.045), (10_000, 1.960)):
        assert t_quantile(0.975, dof) == pytest.approx(expected, abs=2e-3)
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and half == pytest.approx(2.776 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5), rel=1e-3)
    assert fmt_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == "3.0 ± 2.0"


def test_grid_runs_and_by_rate_round_trip():
    runs = grid_runs([1, 2], [0.1, 0.2, 0.3], Arch(norm="layernorm"), dropout=0.5)
    assert [(r.seed, r.lr) for r in runs] == [(1, 0.1), (1, 0.2), (1, 0.3), (2, 0.1), (2, 0.2), (2, 0.3)]
    assert all(r.dropout == 0.5 and r.arch.norm == "layernorm" for r in runs)
    history = {"test_acc": np.array([[10], [20], [30], [11], [21], [31]]), "curve_steps": np.arange(3)}
    shaped = by_rate(history, 3)
    assert shaped["test_acc"][:, :, 0].tolist() == [[10, 11], [20, 21], [30, 31]]  # [rates, seeds]
    assert shaped["curve_steps"].tolist() == [0, 1, 2]
    assert argmax_pick(np.array([[0.5, 0.6], [0.8, 0.7], [np.nan, 0.9]])) == 1   # a failed seed counts as worst


def test_divergence_collapse_and_steps_to_reach():
    sweep = {"train_loss": np.array([[2.0, 1.0], [2.5, 1.0], [np.nan, 1.0], [2.2, 2.2]]),
             "initial_loss": np.array([2.3, 2.3, 2.3, 2.3]), "dead": np.array([0.0, 0.1, 0.0, 0.9])}
    assert diverged(sweep).tolist() == [False, True, True, False]   # a spike above the start counts
    assert failed(sweep).tolist() == [False, True, True, True]      # and so does a collapse to dead units
    healthy = {"train_loss": np.array([[2.0, 1.0]] * 3), "initial_loss": np.full(3, 2.3), "dead": np.zeros(3),
               "val_acc": np.array([[0.5, 0.8], [0.5, 0.15], [0.5, np.nan]])}
    assert failed(healthy).tolist() == [False, True, False]   # ended under twice chance: failed; no validation: judged
    rates = [0.1, 0.3, 1.0, 3.0]                               # by divergence and collapse alone
    losses = np.array([[2.0, 1.0], [np.nan, 1.0]])             # 0: trains, 1: diverges
    fails = np.array([[0, 0, 1],                               # [rates, seeds]: seed 0 fails at 1.0 and trains
                      [0, 0, 0],                               # again at 3.0; seed 1 fails only at 3.0; seed 2
                      [1, 0, 0],                               # fails at the first rate and trains later
                      [0, 1, 0]])
    grid = {"train_loss": losses[fails], "initial_loss": np.full((4, 3), 2.3), "dead": np.zeros((4, 3))}
    assert largest_stable(grid, rates).tolist() == [0.3, 1.0, 0.05]   # up to the first failure; half the first rate
    grid["train_loss"][3, 1] = losses[0]
    assert largest_stable(grid, rates).tolist() == [0.3, 3.0, 0.05]   # never failed: the grid's end
    curve = {"curve_acc": np.array([[[0.1, 0.5, 0.9, 0.95], [0.1, 0.2, 0.3, 0.4]]]), "curve_steps": np.array([0, 10, 20, 30])}
    steps = steps_to_reach(curve, 0, 0.85)
    assert steps[0] == 20 and np.isnan(steps[1])


def test_dead_fraction_counts_units_that_never_fire():
    models = StackedMLP([Run(1, arch=Arch(hidden=(4, 2)))], "cpu")
    (W0, b0), (W1, b1) = models.linear(0), models.linear(1)
    with torch.no_grad():
        W0.zero_(), b0.copy_(torch.tensor([[1.0, -1.0, -1.0, -1.0]]))
        W1.zero_(), b1.copy_(torch.tensor([[-1.0, 1.0]]))
    assert dead_fraction(models, torch.rand(10, 784)).tolist() == [pytest.approx(4 / 6)]


def test_modules_of_the_variants():
    x = torch.randn(48, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    ghost, plain = GhostBatchNorm1d(6, ghost=48).double(), torch.nn.BatchNorm1d(6).double()
    torch.testing.assert_close(ghost(x), plain(x))                   # one group of the whole batch: BatchNorm
    torch.testing.assert_close(ghost.running_var, plain.running_var)
    small = GhostBatchNorm1d(6, ghost=8).double()(x).view(6, 8, 6)
    torch.testing.assert_close(small.mean(1), torch.zeros(6, 6, dtype=torch.float64))  # each group normalised
    frozen = FrozenBatchNorm1d(6).double()
    first = frozen(x)
    torch.testing.assert_close(first.mean(0), torch.zeros(6, dtype=torch.float64))
    scale = torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(frozen(2 * x), 2 * first + x.mean(0) / scale)  # statistics of the first batch, kept
    noisy = NoisyBatchNorm1d(6, level=1.0, stream=0).double()
    outs = []
    for step in range(2):
        noisy.seed, noisy.step = 1, step
        outs.append(noisy(x))
    assert (outs[0].mean(0) - outs[1].mean(0)).abs().max() > 0.1  # the distribution moves from step to step
    torch.testing.assert_close(noisy.eval()(x), torch.nn.functional.batch_norm(
        x, noisy.running_mean, noisy.running_var, noisy.weight, noisy.bias, False))


def test_he_init_and_init_scale(nb):
    he, _ = make_model(lambda: MLP(Arch(hidden=(512,))), 0, "cpu", he_init=True)
    assert he.layers[0].weight.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.02)
    assert he.layers[0].bias.abs().max() == 0
    base, _ = make_model(nb.FashionNetwork, 3, "cpu")
    scaled, _ = make_model(nb.FashionNetwork, 3, "cpu", init_scale=10.0)
    for a, b in zip(base.state_dict().values(), scaled.state_dict().values()):
        torch.testing.assert_close(10 * a, b)


def test_tuning_never_sees_the_test_split_and_reporting_never_the_validation_split():
    g = torch.Generator().manual_seed(0)
    split = lambda n: (torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    data = {"train": split(320), "val": split(200), "test": split(100)}
    protocol = Protocol(5, 2, 64, progress=False)
    rates = [0.001, 0.1]
    grids = {"bn": (Arch(norm="batchnorm"), rates, {}), "ln": (Arch(norm="layernorm"), rates, {"momentum": 0.9})}
    tuned = protocol.tune("tuning", grids, data, 1)
    for name, sweep in tuned.items():
        assert "test_acc" not in sweep and np.isfinite(sweep["val_acc"][..., -1]).all()
        assert sweep["val_acc"].shape[:2] == (len(rates), 2)
    alone = by_rate(train_runs(grid_runs(protocol.tuning_seeds, rates, Arch(norm="batchnorm")),
                               {k: data[k] for k in ("train", "val")}, 1, 64, evaluate=("val",)).history, len(rates))
    np.testing.assert_allclose(tuned["bn"]["val_acc"], alone["val_acc"], atol=1e-6)   # as if trained alone
    reported = protocol.report("reporting", {"bn": [Run(s, 0.1, arch=Arch(norm="batchnorm"))
                                                    for s in protocol.reporting_seeds(3)]}, data, 1)
    assert "val_acc" not in reported["bn"].history and reported["bn"].history["test_acc"].shape == (3, 1)
    assert protocol.model_epochs == pytest.approx((2 * 2 * 2 + 3) * 320 / 60_000)   # what every pass returned
    assert not set(protocol.tuning_seeds) & set(protocol.reporting_seeds(5000))
    assert protocol.reporting_seeds(5, start=3) == protocol.reporting_seeds(5)[3:]   # the next seeds of a design
    with pytest.raises(ValueError, match="at most 5,000 reporting"):
        protocol.reporting_seeds(5001)


def test_parts_come_back_in_the_order_given():
    """A pass of named lists: each part's history rows and models in its own given order (not the stack's)."""
    data = {"train": (torch.rand(128, 784, generator=torch.Generator().manual_seed(1)), torch.arange(128) % 10)}
    named = {"a": [Run(2, 0.1), Run(1, 0.2)], "b": [Run(1, 0.3, arch=Arch(norm="batchnorm")), Run(2, 0.4)]}
    parts = Protocol(1, 2, 64, progress=False).train("parts", named, data, 1)
    for name, runs in named.items():
        assert [m.layers[0].weight.shape for m in parts[name].models.to_modules()] == [(64, 784)] * 2
        lrs = parts[name].models.per_run(parts[name].models.lr)
        assert lrs.tolist() == pytest.approx([r.lr for r in runs])


def test_the_selection_rule_prefers_the_smallest_candidate_within_one_standard_error():
    scores = np.array([[0.80, 0.82, 0.81], [0.84, 0.86, 0.85], [0.84, 0.88, 0.86]])
    assert one_se_pick(scores) == 1                     # 0.85 is within one SE (0.012) of the best mean, 0.86
    assert np.argmax(scores.mean(1)) == 2
    assert one_se_pick(np.array([[0.5, 0.6], [0.9, 0.95], [np.nan, np.nan]])) == 1
    with pytest.raises(ValueError):
        one_se_pick(np.full((2, 3), np.nan))


def test_every_seed_owns_a_block_that_no_other_seed_shares():
    """The confirmatory seed policy: reporting and tuning seeds of different SEEDs never meet, and the development
    block (SEED 0) holds every seed of the old policy (SEED + i, SEED + 1,000 + i) at the SEEDs run before."""
    from bnstudy.protocol import DEVELOPMENT_SEED, seed_block
    blocks = {s: seed_block(s, 30, 5) for s in (DEVELOPMENT_SEED, 1, 5, 7, 42, 2024)}
    seen = set()
    for reporting, tuning in blocks.values():
        assert not set(reporting) & set(tuning)
        assert not (set(reporting) | set(tuning)) & seen
        seen |= set(reporting) | set(tuning)
    development = range(10_000)
    old = {s + i for s in (1, 5, 7, 42, 2024) for i in range(30)} | {s + 1000 + i for s in (1, 5, 7, 42, 2024)
                                                                     for i in range(5)}
    assert old <= set(development)
    assert all(not set(development) & (set(r) | set(t)) for s, (r, t) in blocks.items() if s != DEVELOPMENT_SEED)
    with pytest.raises(ValueError):
        seed_block(42, 5_001, 5)


def test_noisy_batchnorm_noise_has_mean_scale_one_and_mean_shift_zero():
    """7.1's noise moves each unit's distribution every step, but on average leaves it alone: mean scale 1, mean
    shift 0, so that training and evaluation (no noise) agree in mean; the second moment of a unit-variance output
    is about 1.58 in training (stated in the notebook), against 1 at evaluation."""
    from bnstudy.norms import bn_noise
    units = torch.arange(64)
    samples = torch.arange(256).view(-1, 1) * 64 + units                       # [samples, units]
    draws = [bn_noise(3, step, 0, 1.0, units, samples) for step in range(2000)]
    scale = torch.stack([d[0] for d in draws]).double()
    shift = torch.stack([d[1] for d in draws]).double()
    assert scale.mean().item() == pytest.approx(1.0, abs=0.008) and shift.mean().item() == pytest.approx(0.0, abs=0.008)
    z = torch.randn(scale.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (z * scale + shift).pow(2).mean().item() == pytest.approx(1.58, abs=0.03)
    assert scale.std(0).mean() > 0.3 and (scale[1] - scale[0]).abs().mean() > 0.1   # it does move, step to step


def fake_reports(n_seeds, keys, images=400, seed=0):
    """Reports whose conditions hold random per-image correctness for seeds 0..n_seeds − 1 (no training)."""
    from bnstudy.protocol import Reports
    rng, reports = np.random.default_rng(seed), Reports(test=None)
    for i, key in enumerate(keys):
        reports.correct[key] = rng.random((n_seeds, images)) < 0.6 + 0.05 * i
        reports.acc[key] = 100 * reports.correct[key].mean(1)
        reports.seeds[key] = list(range(n_seeds))
    return reports


def test_a_difference_of_differences_is_per_seed_and_image_and_needs_paired_seeds():
    keys = ["a8", "a64", "b8", "b64"]
    r = fake_reports(6, keys)
    c = {k: r.correct[k].astype(float) for k in keys}
    expected = 100 * ((c["a8"] - c["a64"]) - (c["b8"] - c["b64"]))
    np.testing.assert_allclose(r.combined([("a8", "a64"), ("b8", "b64")]), expected)
    np.testing.assert_allclose(r.combined([("a8", "a64")], n=4), 100 * (c["a8"] - c["a64"])[:4])
    r.seeds["b8"] = [9, *range(1, 6)]
    with pytest.raises(ValueError, match="not paired"):
        r.combined([("a8", "a64"), ("b8", "b64")])


def test_the_sequential_design_over_several_primaries_trains_each_condition_once_to_its_largest_n():
    from bnstudy.stats import Contrast, per_image, planned_seeds
    keys = ["a", "b", "c", "d"]
    r = fake_reports(10, keys)
    r.acc["d"], r.correct["d"], r.seeds["d"] = (np.concatenate([v, v]) if k != "seeds" else v + list(range(10, 20))
                                                for k, v in (("acc", r.acc["d"]), ("correct", r.correct["d"]),
                                                             ("seeds", r.seeds["d"])))   # d already has 20 seeds
    wide = Contrast("a − b", +1, 1.0, "test")
    plans = {"one": ([("a", "b")], wide), "two": ([("a", "b"), ("c", "d")], wide)}
    calls = []
    needs = r.top_up(plans, 10, 20, lambda keys, start, stop: calls.append((sorted(keys), start, stop)))
    for claim, (pairs, contrast) in plans.items():
        seed_means, images = per_image(r.combined(pairs, 10))
        assert needs[claim] == planned_seeds(seed_means, contrast, maximum=20, images=images)
    trained = {k: (start, stop) for ks, start, stop in calls for k in ks}
    assert "d" not in trained   # it has the seeds already
    assert trained.get("a", (10, 10))[1] == max(needs.values()) and trained.get("c", (10, needs["two"]))[1] == needs["two"]
    assert all(start == 10 for _, start, _ in calls) and len({k for ks, _, _ in calls for k in ks}) == sum(
        len(ks) for ks, _, _ in calls)
