"""The training engine: K stacked models compute exactly what K textbook loops with torch.optim compute."""
import math

import numpy as np
import pytest
import torch

from bnstudy.counters import counter_uniform
from bnstudy.data import resident_batches
from bnstudy.engine import Trainer, cross_entropy_step, train_runs
from bnstudy.models import Arch, CounterDropout, MLP, Run, make_model, max_state_difference
from bnstudy.protocol import cosine
from bnstudy.stack import StackedMLP


def states_close(a, b, tol):
    """Every parameter and buffer of two models equal within `tol`, absolute or relative."""
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    return all(torch.allclose(a[k].double(), b[k].double(), rtol=tol, atol=tol) for k in a)


def test_epoch_permutation_is_the_dataloader_order(nb, fashion):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loader = nb.dataloader_batches(fashion["train_set"], 1000, g1)
    for epoch in range(2):  # the second epoch checks that both consume the generator alike
        for (xa, ya), (xb, yb) in zip(loader, resident_batches(fashion["train"], 1000, g2), strict=True):
            assert torch.equal(xa.flatten(1), xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("name", ["FashionNetwork", "FashionNetworkBatchNorm"])
def test_one_epoch_resident_equals_dataloader_loop(nb, fashion, name):
    reference, g_ref = make_model(getattr(nb, name), 11, "cpu")
    fast, g_fast = make_model(getattr(nb, name), 11, "cpu")
    nb.train_epoch(reference, nb.dataloader_batches(fashion["train_set"], 64, g_ref), 0.001)
    nb.train_epoch(fast, resident_batches(fashion["train"], 64, g_fast), 0.001)
    # On CPU the two paths run the same kernels on the same numbers: the notebook says "bitwise", so check it.
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), fast.state_dict().values()))


CASES = {  # name: (Arch settings, optimizer, [Run settings]); every case is one pass
    "baseline, plain SGD, two seeds": ({}, "sgd", [dict(seed=1, lr=0.01), dict(seed=1, lr=0.3),
                                                   dict(seed=2, lr=0.05), dict(seed=2, lr=0.1)]),
    "BatchNorm, plain SGD": ({"norm": "batchnorm"}, "sgd", [dict(seed=1, lr=0.01), dict(seed=2, lr=0.3)]),
    "BatchNorm, momentum and weight decay": ({"norm": "batchnorm"}, "sgd",
                                             [dict(seed=1, lr=0.01, momentum=0.9, weight_decay=1e-3),
                                              dict(seed=2, lr=0.1)]),
    "baseline, weight decay, plain SGD": ({}, "sgd", [dict(seed=3, lr=0.05, weight_decay=0.01),
                                                      dict(seed=3, lr=0.1, weight_decay=0.0)]),
    "BatchNorm, Adam with weight decay": ({"norm": "batchnorm"}, "adam",
                                          [dict(seed=1, lr=1e-3), dict(seed=2, lr=3e-3, weight_decay=0.01)]),
    "LayerNorm, dropout": ({"norm": "layernorm"}, "sgd", [dict(seed=1, lr=0.01, dropout=0.2),
                                                          dict(seed=1, lr=0.05, dropout=0.5)]),
    "GroupNorm, init scale and He init": ({"norm": "groupnorm"}, "sgd",
                                          [dict(seed=3, lr=0.05, init_scale=2.0), dict(seed=4, lr=0.05, he_init=True)]),
    "frozen BatchNorm": ({"norm": "frozen_batchnorm"}, "sgd", [dict(seed=3, lr=0.05), dict(seed=4, lr=0.02)]),
    "ghost BatchNorm, short last batch": ({"norm": "ghost_batchnorm", "ghost": 16}, "sgd",
                                          [dict(seed=3, lr=0.05), dict(seed=4, lr=0.05)]),
    "noisy BatchNorm, dropout": ({"norm": "noisy_batchnorm"}, "sgd", [dict(seed=3, lr=0.05, dropout=0.3),
                                                                      dict(seed=4, lr=0.01)]),
    "BatchNorm after ReLU, 5 layers": ({"norm": "batchnorm_after_relu", "hidden": (32,) * 5}, "sgd",
                                       [dict(seed=3, lr=0.01), dict(seed=4, lr=0.01)]),
    "standardised inputs, 1 layer, momentum": ({"standardize": True, "hidden": (16,)}, "sgd",
                                               [dict(seed=3, lr=0.05, momentum=0.9), dict(seed=4, lr=0.05)]),
    "16 hidden layers, LayerNorm": ({"norm": "layernorm", "hidden": (16,) * 16}, "sgd",
                                    [dict(seed=5, lr=0.05), dict(seed=5, lr=0.01)]),
}


def agrees_with_textbook(nb, runs, train, epochs, batch, optimizer, tol=1e-9):
    """Train `runs` in one pass (float64) and each alone with the textbook loop and torch.optim: largest gap."""
    trained = train_runs(runs, {"train": train, "test": train}, epochs, batch, optimizer, evaluate=("test",),
                         dtype=torch.float64)
    gaps = [max_state_difference(stacked, nb.train_textbook(run.arch, run, train, epochs, batch, optimizer))
            for run, stacked in zip(runs, trained.models.to_modules())]
    assert trained.history["test_acc"].shape == (len(runs), epochs)
    return max(gaps)


@pytest.mark.parametrize("case", list(CASES))
def test_stack_equals_textbook_loop_with_torch_optim_in_float64(nb, fashion, case):
    """Two epochs of 1,280 images (the second batch size does not divide it) in float64: rounding stays near 1e-15."""
    arch_settings, optimizer, run_settings = CASES[case]
    arch = Arch(**arch_settings)
    runs = [Run(**r, arch=arch) for r in run_settings]
    batch = 96 if arch.norm == "ghost_batchnorm" else 64      # 1280 = 13 * 96 + 32: a short last batch
    assert agrees_with_textbook(nb, runs, tuple(t[:1280] for t in fashion["train"]), 2, batch, optimizer) < 1e-9


def test_a_pass_of_several_architectures_equals_each_alone(nb, fashion):
    """Architectures that share their widths train in one pass, each block with its own normalisation and inputs;
    the seeds of a block need not be all the pass's seeds."""
    runs = [Run(1, 0.05), Run(2, 0.1, he_init=True), Run(1, 0.1, arch=Arch(norm="batchnorm")),
            Run(2, 0.2, arch=Arch(norm="batchnorm")), Run(3, 0.1, arch=Arch(standardize=True)),
            Run(2, 0.03, dropout=0.2, arch=Arch(norm="noisy_batchnorm")), Run(1, 0.05, arch=Arch(norm="layernorm"))]
    assert agrees_with_textbook(nb, runs, tuple(t[:1280] for t in fashion["train"]), 2, 64, "sgd") < 1e-9


def test_a_runs_result_does_not_depend_on_the_rest_of_its_pass(fashion):
    """In float32, the same run alone and inside a wider pass of other architectures, seeds and rates: equal to
    float32 rounding after an epoch (other shapes of matrix multiply round differently in the last bits)."""
    data = {"train": tuple(t[:3200] for t in fashion["train"]), "test": tuple(t[:2000] for t in fashion["test"])}
    mine = [Run(4, 0.05, arch=Arch(norm="batchnorm")), Run(5, 0.1, arch=Arch(norm="batchnorm"))]
    others = [Run(s, lr, arch=a) for a in (Arch(), Arch(norm="layernorm")) for s in (4, 5, 6) for lr in (0.02, 0.3)]
    others += [Run(s, lr, arch=Arch(norm="batchnorm")) for s in (4, 5) for lr in (0.02, 0.3)]
    alone = train_runs(mine, data, 1, evaluate=("test",))
    shared = train_runs(others[:7] + mine + others[7:], data, 1, evaluate=("test",))
    for k, run in enumerate(mine):
        a, b = alone.models.to_modules()[k], shared.models.to_modules()[7 + k]
        assert states_close(a, b, 2e-4), run
    np.testing.assert_allclose(shared.history["test_acc"][7:9], alone.history["test_acc"], atol=2e-3)


def test_float32_stack_stays_close_to_textbook_float32(nb, fashion):
    train = tuple(t[:1024] for t in fashion["train"])
    arch = Arch(norm="batchnorm")
    runs = [Run(7, 0.01, arch=arch), Run(8, 0.03, arch=arch)]
    trained = train_runs(runs, {"train": train}, 1, 64)
    for run, stacked in zip(runs, trained.models.to_modules()):
        assert states_close(stacked, nb.train_textbook(arch, run, train, 1, dtype=torch.float32), 1e-4)


HALF = 0.5   # the constant schedule's factor: not 1, so that the schedule's path is the one tested


@pytest.mark.parametrize("schedule, momentum, weight_decay", [("cosine", 0.9, 1e-2), ("constant", 0.9, 1e-2),
                                                              ("cosine", 0.0, 1e-2)])
def test_the_lr_schedule_is_torch_optims_lr_scheduler_stepped_per_batch(fashion, schedule, momentum, weight_decay):
    """Cosine (to 0 at the end) and a constant factor of the lr over 2 epochs, with momentum and weight decay: the stack against
    torch.optim.SGD driven by torch.optim.lr_scheduler, stepped after every batch, in float64, to 1e-12."""
    train = (fashion["train"][0][:640].double(), fashion["train"][1][:640])
    arch, epochs, batch = Arch(norm="batchnorm"), 2, 64
    run = Run(9, 0.2, momentum=momentum, weight_decay=weight_decay, arch=arch)
    trained = train_runs([run], {"train": train}, epochs, batch, dtype=torch.float64,
                         schedule=cosine if schedule == "cosine" else lambda progress: HALF)
    model, generator = make_model(lambda: MLP(arch), run.seed, "cpu")
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=momentum, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train[0]) / batch)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if schedule == "cosine"
                 else torch.optim.lr_scheduler.ConstantLR(opt, factor=HALF, total_iters=steps))
    seen = []
    for _ in range(epochs):
        for xb, yb in resident_batches(train, batch, generator):
            seen.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model.train()(xb), yb).backward()
            opt.step()
            scheduler.step()
    assert len(seen) == steps and (set(seen) == {HALF * run.lr} if schedule == "constant" else seen[-1] < 0.01 * run.lr)
    assert max_state_difference(trained.models.to_modules()[0], model) < 1e-12


def test_runs_are_stacked_block_by_block_and_seed_by_seed_and_come_back_in_order():
    bn = Arch(norm="batchnorm")
    runs = [Run(2, 0.1), Run(1, 0.1, arch=bn), Run(1, 0.1), Run(2, 0.01), Run(1, 0.01), Run(2, 0.3, arch=bn)]
    models = StackedMLP(runs, "cpu")
    assert [(r.arch.norm, r.seed) for r in models.runs] == [("none", 2), ("none", 2), ("none", 1), ("none", 1),
                                                            ("batchnorm", 1), ("batchnorm", 2)]
    assert [(b.arch.norm, b.start, b.stop) for b in models.blocks] == [("none", 0, 4), ("batchnorm", 4, 6)]
    for run, model in zip(runs, models.to_modules()):  # untrained: each is its own seed's init, in the caller's order
        fresh, _ = make_model(lambda: MLP(run.arch), run.seed, "cpu")
        assert max_state_difference(model, fresh) == 0
    trainer = Trainer([Run(1), Run(1, 0.1), Run(2), Run(3), Run(4, 0.1), Run(4, 0.2)], "cpu")
    assert [(g.rows, g.U) for g in trainer.groups] == [(slice(0, 2), 1), (slice(2, 4), 2), (slice(4, 6), 1)]
    with pytest.raises(ValueError, match="one width profile"):
        StackedMLP([Run(1), Run(1, arch=Arch(hidden=(64,)))], "cpu")


@pytest.mark.parametrize("arch_settings, optimizer, run_settings", [
    ({"norm": "batchnorm"}, "sgd", dict(lr=0.01)),
    ({"norm": "noisy_batchnorm"}, "sgd", dict(lr=0.01, dropout=0.3)),
    ({"norm": "ghost_batchnorm", "ghost": 8}, "sgd", dict(lr=0.01, momentum=0.9, weight_decay=1e-4)),
    ({"norm": "frozen_batchnorm"}, "adam", dict(lr=0.001)),
    ({"norm": "groupnorm", "standardize": True}, "sgd", dict(lr=0.01)),
])
def test_step_loop_is_device_clean_on_the_meta_device(arch_settings, optimizer, run_settings):
    """On `meta` tensors have shapes but no values: any read-back to the host, or a tensor left on another device,
    raises. So a step that runs here does no host sync and keeps everything on the data's device."""
    meta = torch.device("meta")
    runs = [Run(s, arch=Arch(**arch_settings), **run_settings) for s in (1, 2) for _ in range(2)]
    stats = (torch.empty((), device=meta), torch.empty((), device=meta))
    trainer = Trainer(runs + [Run(1, 0.1), Run(2, 0.1)], meta, optimizer=optimizer, input_stats=stats)
    X, y = torch.empty(2, 64, 784, device=meta), torch.empty(2, 64, dtype=torch.int64, device=meta)
    for _ in range(3):
        loss, hits = trainer.step(X, y, lr_factor=0.5)
    assert loss.device == hits.device == meta and trainer.models.steps_taken == 3
    assert trainer.models.evaluate((X[0], y[0]))[1].device == meta


def test_cross_entropy_step_is_autograds():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 50, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 10, (3, 50), generator=g)
    scale = torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64)
    losses, hits, grad = cross_entropy_step(logits.detach().clone(), targets, scale)
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none").mean(1)
    torch.testing.assert_close(losses, expected.detach())
    (d_logits,) = torch.autograd.grad((expected * scale).sum(), [logits])
    torch.testing.assert_close(grad, d_logits * logits.shape[2])   # the step's gradient is of the summed loss
    assert torch.equal(hits, (logits.argmax(1) == targets).sum(1))


def test_counter_uniform_is_a_function_of_its_counters():
    index = torch.arange(100_000)
    u = counter_uniform(7, 3, 1, index)
    assert torch.equal(u, counter_uniform(7, 3, 1, index)) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    for other in (counter_uniform(8, 3, 1, index), counter_uniform(7, 4, 1, index),
                  counter_uniform(7, 3, 2, index)):
        assert abs(np.corrcoef(u.numpy(), other.numpy())[0, 1]) < 0.02
    seeds = torch.tensor([7, 8]).view(2, 1)  # one seed per stacked model broadcasts like one call per model
    assert torch.equal(counter_uniform(seeds, 3, 1, index)[0], u)


def murmur_fmix32(h):
    """MurmurHash3's finaliser on one Python int (a 32-bit word): what the int32 tensor arithmetic must reproduce."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_counter_uniform_matches_murmur3_on_python_ints():
    # counter_uniform computes in int32 bit patterns (wrapping products, masked shifts); every word must be the
    # one exact 32-bit arithmetic gives, including words with the top bit set and index values past 2**31
    index = torch.cat([torch.arange(3000), torch.tensor([2**31 - 1, 2**31, 2**32 - 1])])
    for seed, step, stream in ((0, 0, 0), (42, 7, 3), (1041, 99_999, 207), (10**6, 3925, 100)):
        key = murmur_fmix32((seed * 0x9E3779B1 + step * 0x7F4A7C15 + stream * 0x632BE5AB) & 0xFFFFFFFF)
        expected = torch.tensor([murmur_fmix32(key ^ i) / 2**32 for i in index.tolist()], dtype=torch.float64)
        assert torch.equal(counter_uniform(seed, step, stream, index), expected)


def test_dropout_masks_are_nested_across_rates_and_keep_the_expectation():
    x = torch.ones(256, 64)
    masks = {}
    for p in (0.2, 0.5):
        layer = CounterDropout(p, stream=100)
        layer.seed, layer.step = 3, 9
        masks[p] = layer.train()(x) > 0
        assert abs(masks[p].float().mean().item() - (1 - p)) < 0.01
        assert torch.allclose(layer(x).mean(), torch.tensor(1.0), atol=0.03)
        assert torch.equal(layer.eval()(x), x)
    assert torch.all(masks[0.2] | ~masks[0.5])  # what p = 0.5 keeps, p = 0.2 keeps too: paired runs differ least


def test_same_seed_gives_identical_metrics_twice_and_stacked_runs_are_independent(fashion):
    data = {"train": tuple(t[:3000] for t in fashion["train"]), "test": tuple(t[:2000] for t in fashion["test"])}
    bn = Arch(norm="batchnorm")
    runs = [train_runs([Run(4, 0.01, arch=bn), Run(5, 0.01, arch=bn)], data, 2, evaluate=("test",)).history
            for _ in range(2)]
    for metric in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert np.array_equal(runs[0][metric], runs[1][metric])
    other = train_runs([Run(6, 0.01, arch=bn), Run(5, 0.01, arch=bn)], data, 2, evaluate=("test",)).history
    assert not np.array_equal(other["test_loss"][0], runs[0]["test_loss"][0])
    np.testing.assert_allclose(other["test_loss"][1], runs[0]["test_loss"][1], rtol=1e-5)


def test_every_measurement_is_of_the_split_named(fashion):
    train, val = tuple(t[:1280] for t in fashion["train"]), tuple(t[-1000:] for t in fashion["train"])
    data = {"train": train, "val": val, "curve": val, "test": tuple(t[:500] for t in fashion["test"])}
    trained = train_runs([Run(1, 0.1), Run(1, 0.2)], data, 2, 64, evaluate=("val", "test"), curve="curve",
                         evals_per_epoch=4, initial_loss="test")
    h = trained.history
    assert h["curve_steps"].tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40] and h["curve_acc"].shape == (2, 9)
    np.testing.assert_allclose(h["curve_acc"][:, -1], h["val_acc"][:, -1])   # the curve split is val here
    untrained = StackedMLP([Run(1, 0.1), Run(1, 0.2)], "cpu")
    np.testing.assert_allclose(h["initial_loss"], untrained.per_run(untrained.evaluate(data["test"])[0]))
    assert set(h) == {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "initial_loss",
                      "curve_steps", "curve_acc"}
    assert trained.model_epochs == pytest.approx(2 * 2 * 1280 / 60_000)   # counted in 60,000-image epochs
    bare = train_runs([Run(1, 0.1)], data, 1, 64).history                  # nothing named: training metrics only
    assert set(bare) == {"train_loss", "train_acc"}


def test_correctness_per_image_averages_to_the_accuracy(fashion):
    """The per-image record that the CI over test images needs is the accuracy, image by image, in eval mode."""
    data = {"train": tuple(t[:640] for t in fashion["train"]), "test": tuple(t[:700] for t in fashion["test"])}
    models = train_runs([Run(1, 0.1, arch=Arch(norm="batchnorm")), Run(2, 0.1)], data, 1).models
    hits = models.correct_per_image(data["test"], chunk=300)    # chunks that do not divide the 700 images
    assert hits.shape == (2, 700) and hits.dtype == torch.bool
    torch.testing.assert_close(hits.double().mean(1), models.evaluate(data["test"])[1].double(), rtol=0, atol=1e-6)


def test_a_last_batch_of_one_image_is_refused_where_batch_statistics_need_two():
    X, y = torch.rand(65, 784, generator=torch.Generator().manual_seed(0)), torch.arange(65) % 10
    data = {"train": (X, y), "test": (X, y)}
    with pytest.raises(ValueError, match="batch of one image"):
        train_runs([Run(0, 0.1, arch=Arch(norm="batchnorm"))], data, 1, 64)
    train_runs([Run(0, 0.1)], data, 1, 64)   # no batch statistics: a batch of one is fine


@pytest.mark.parametrize("shared", [True, False])
def test_one_torch_func_step_of_the_benchmark_is_one_step_of_the_engine(shared):
    """The benchmark's torch.func rows (vmap(grad(functional_call)) over stack_module_state, BatchNorm's running
    statistics tracked, SGD as one foreach update) train the same models: one step each, in float64."""
    from benchmarks.epoch_speed import FuncStack
    g = torch.Generator().manual_seed(0)
    runs = [Run(0 if shared else s, 0.01 * (1 + s), arch=Arch(norm="batchnorm")) for s in range(4)]
    S = 1 if shared else 4
    xs, ys = torch.rand(S, 64, 784, generator=g, dtype=torch.float64), torch.randint(0, 10, (S, 64), generator=g)
    func, trainer = FuncStack(runs, "cpu", torch.float64), Trainer(runs, "cpu", torch.float64)
    func.step(xs, ys)
    trainer.step(xs, ys)
    for k, model in enumerate(trainer.models.to_modules()):
        state = model.state_dict()
        for name, value in {**func.params, **func.buffers}.items():
            if not name.endswith("num_batches_tracked"):
                torch.testing.assert_close(state[name], value[k].detach(), rtol=0, atol=1e-13)


def test_a_stack_of_several_architectures_differentiates_as_its_modules(fashion):
    """Autograd through a stack of three architectures (the probes' path, whose blocks are composed out of place)
    gives each model the gradient that its own nn.Module gives, in float64."""
    x, y = fashion["train"][0][:64].double(), fashion["train"][1][:64]
    runs = [Run(1, 0.1), Run(1, 0.1, arch=Arch(norm="batchnorm")), Run(2, 0.1, arch=Arch(norm="layernorm"))]
    stack = StackedMLP(runs, "cpu", torch.float64)
    modules = [m.double().train() for m in stack.to_modules()]
    params = stack.probe_parameters()
    grads = torch.autograd.grad(stack.batch_loss(x, y).sum(), params)
    for k, module in enumerate(modules):
        torch.nn.functional.cross_entropy(module(x), y).backward()
        linear_grads = [t.grad for layer in module.modules() if isinstance(layer, torch.nn.Linear)
                        for t in (layer.weight, layer.bias)]
        for mine, theirs in zip(grads[:len(linear_grads)], linear_grads):
            assert torch.allclose(mine[k], theirs, atol=1e-12), k
