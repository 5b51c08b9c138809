"""The training engine: K stacked models compute exactly what K textbook loops with torch.optim compute."""
import numpy as np
import pytest
import torch

from bnstudy.data import resident_batches
from bnstudy.engine import Run, Stack, run_epoch, train_runs
from bnstudy.models import Arch, CounterDropout, MLP, counter_uniform, make_model, max_state_difference


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


CASES = {  # name: (Arch settings, optimizer, [Run settings]); every case is one stacked pass
    "baseline, plain SGD, two seeds": ({}, "sgd", [dict(seed=1, lr=0.01), dict(seed=1, lr=0.3),
                                                   dict(seed=2, lr=0.05), dict(seed=2, lr=0.1)]),
    "BatchNorm, plain SGD": ({"norm": "batchnorm"}, "sgd", [dict(seed=1, lr=0.01), dict(seed=2, lr=0.3)]),
    "BatchNorm, momentum and weight decay": ({"norm": "batchnorm"}, "sgd",
                                             [dict(seed=1, lr=0.01, momentum=0.9, weight_decay=1e-3),
                                              dict(seed=2, lr=0.1)]),
    "baseline, weight decay, fused SGD": ({}, "sgd", [dict(seed=3, lr=0.05, weight_decay=0.01),
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
    "noisy BatchNorm": ({"norm": "noisy_batchnorm"}, "sgd", [dict(seed=3, lr=0.05), dict(seed=4, lr=0.01)]),
    "BatchNorm after ReLU, 5 layers": ({"norm": "batchnorm_after_relu", "hidden": (32,) * 5}, "sgd",
                                       [dict(seed=3, lr=0.01), dict(seed=4, lr=0.01)]),
    "standardised inputs, 1 layer, momentum": ({"standardize": True, "hidden": (16,)}, "sgd",
                                               [dict(seed=3, lr=0.05, momentum=0.9), dict(seed=4, lr=0.05)]),
    "16 hidden layers, LayerNorm": ({"norm": "layernorm", "hidden": (16,) * 16}, "sgd",
                                    [dict(seed=5, lr=0.05), dict(seed=5, lr=0.01)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stack_equals_textbook_loop_with_torch_optim_in_float64(nb, fashion, case):
    """Two epochs of 1,280 images (the second batch size does not divide it) in float64: rounding stays near 1e-15."""
    arch_settings, optimizer, run_settings = CASES[case]
    arch, runs = Arch(**arch_settings), [Run(**r) for r in run_settings]
    train = tuple(t[:1280] for t in fashion["train"])
    batch = 96 if arch.norm == "ghost_batchnorm" else 64      # 1280 = 13 * 96 + 32: a short last batch
    stack, history = train_runs(arch, runs, {"train": train, "test": train}, 2, batch, optimizer, log=False,
                                   dtype=torch.float64)
    for run, stacked in zip(runs, stack.to_modules()):
        alone = nb.train_textbook(arch, run, train, 2, batch, optimizer)
        assert max_state_difference(stacked, alone) < 1e-9, run
    assert history["test_acc"].shape == (len(runs), 2)


def test_float32_stack_stays_close_to_textbook_float32(nb, fashion):
    train = tuple(t[:1024] for t in fashion["train"])
    arch, runs = Arch(norm="batchnorm"), [Run(7, 0.01), Run(8, 0.03)]
    stack, _ = train_runs(arch, runs, {"train": train, "test": train}, 1, 64, log=False)
    for run, stacked in zip(runs, stack.to_modules()):
        assert states_close(stacked, nb.train_textbook(arch, run, train, 1, dtype=torch.float32), 1e-4)


def test_runs_of_a_seed_form_one_group_and_come_back_in_order():
    runs = [Run(2, 0.1), Run(1, 0.1), Run(2, 0.01), Run(1, 0.01)]
    stack = Stack(Arch(), runs, "cpu")
    assert (stack.U, stack.G, stack.K) == (2, 2, 4)
    assert [r.seed for r in stack.runs] == [2, 2, 1, 1]
    for run, model in zip(runs, stack.to_modules()):  # untrained: each is its own seed's init, in the caller's order
        fresh, _ = make_model(lambda: MLP(Arch()), run.seed, "cpu")
        assert max_state_difference(model, fresh) == 0
    with pytest.raises(ValueError, match="same number of runs"):
        Stack(Arch(), [Run(1), Run(1), Run(2)], "cpu")


@pytest.mark.parametrize("arch_settings, optimizer, run_settings", [
    ({"norm": "batchnorm"}, "sgd", dict(lr=0.01)),
    ({"norm": "noisy_batchnorm"}, "sgd", dict(lr=0.01, dropout=0.3)),
    ({"norm": "ghost_batchnorm", "ghost": 8}, "sgd", dict(lr=0.01, momentum=0.9, weight_decay=1e-4)),
    ({"norm": "frozen_batchnorm"}, "adam", dict(lr=0.001)),
    ({"norm": "groupnorm"}, "sgd", dict(lr=0.01)),
])
def test_step_loop_is_device_clean_on_the_meta_device(arch_settings, optimizer, run_settings):
    """On `meta` tensors have shapes but no values: any read-back to the host, or a tensor left on another device,
    raises. So a loop that runs here does no host sync per step and keeps everything on the data's device."""
    meta = torch.device("meta")
    runs = [Run(s, **run_settings) for s in (1, 2) for _ in range(2)]
    stack = Stack(Arch(**arch_settings), runs, meta, optimizer=optimizer)
    X, y = torch.empty(640, 784, device=meta), torch.empty(640, dtype=torch.int64, device=meta)
    order = torch.empty(2, 640, dtype=torch.int64, device=meta)
    loss, acc, curve = run_epoch(stack, (X, y), order, 64, probe=(X[:100], y[:100]), curve_at={0, 5})
    assert loss.device == acc.device == meta and len(curve) == 2 and stack.steps_taken == 10


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
    runs = [train_runs(Arch(norm="batchnorm"), [Run(4, 0.01), Run(5, 0.01)], data, 2, log=False)[1]
            for _ in range(2)]
    for metric in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert np.array_equal(runs[0][metric], runs[1][metric])
    _, other = train_runs(Arch(norm="batchnorm"), [Run(6, 0.01), Run(5, 0.01)], data, 2, log=False)
    assert not np.array_equal(other["test_loss"][0], runs[0]["test_loss"][0])
    np.testing.assert_allclose(other["test_loss"][1], runs[0]["test_loss"][1], rtol=1e-5)


def test_accuracy_curve_and_validation_metrics(fashion):
    train, val = tuple(t[:1280] for t in fashion["train"]), tuple(t[-1000:] for t in fashion["train"])
    data = {"train": train, "val": val, "probe": val, "test": tuple(t[:500] for t in fashion["test"])}
    stack, history = train_runs(Arch(), [Run(1, 0.1), Run(1, 0.2)], data, 2, 64, evals_per_epoch=4,
                                   log=False)
    assert history["curve_steps"].tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert history["curve_acc"].shape == (2, 9)
    np.testing.assert_allclose(history["curve_acc"][:, -1], history["val_acc"][:, -1])  # probe = val here
    assert np.isfinite(history["val_acc"]).all() and history["initial_loss"].shape == (2,)


def test_precise_batchnorm_is_the_average_of_batch_statistics(fashion):
    X = fashion["train"][0][:512].double()
    stack = Stack(Arch(norm="batchnorm"), [Run(1), Run(2)], "cpu", torch.float64)
    stack.precise_bn(X, batch_size=128)
    for k, model in enumerate(stack.to_modules()):
        h = torch.stack([model.layers[0](xb) for xb in X.split(128)])          # [batches, 128, 64]
        torch.testing.assert_close(model.layers[1].running_mean, h.mean(1).mean(0))
        torch.testing.assert_close(model.layers[1].running_var, h.var(1, unbiased=True).mean(0))


def test_schedule_scales_the_learning_rate(fashion):
    train = tuple(t[:640] for t in fashion["train"])
    data = {"train": train, "test": train}
    still = train_runs(Arch(), [Run(1, 0.1)], data, 1, schedule=lambda progress: 0.0, log=False)[0]
    untrained, _ = make_model(lambda: MLP(Arch()), 1, "cpu")
    assert max_state_difference(still.to_modules()[0], untrained) == 0


def test_a_last_batch_of_one_image_is_refused_where_batch_statistics_need_two():
    X, y = torch.rand(65, 784, generator=torch.Generator().manual_seed(0)), torch.arange(65) % 10
    data = {"train": (X, y), "test": (X, y)}
    with pytest.raises(ValueError, match="batch of one image"):
        train_runs(Arch(norm="batchnorm"), [Run(0, 0.1)], data, 1, 64, log=False)
    train_runs(Arch(), [Run(0, 0.1)], data, 1, 64, log=False)   # no batch statistics: a batch of one is fine
