"""The training engine: the fast paths compute what the textbook loop computes, and the metrics are right."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F


def states_close(a, b, tol):
    """Every parameter and buffer of two models equal within `tol`, absolute or relative."""
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    return all(torch.allclose(a[k].double(), b[k].double(), rtol=tol, atol=tol) for k in a)


def test_epoch_permutation_is_the_dataloader_order(nb, fashion):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loader = nb.dataloader_batches(fashion["train_set"], 1000, g1)
    for epoch in range(2):  # the second epoch checks that both consume the generator alike
        for (xa, ya), (xb, yb) in zip(loader, nb.resident_batches(fashion["train"], 1000, g2), strict=True):
            assert torch.equal(xa.flatten(1), xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("name", ["FashionNetwork", "FashionNetworkBatchNorm"])
def test_one_epoch_resident_equals_dataloader_loop(nb, fashion, name):
    reference, g_ref = nb.make_model(getattr(nb, name), 11, "cpu")
    fast, g_fast = nb.make_model(getattr(nb, name), 11, "cpu")
    nb.train_epoch(reference, nb.dataloader_batches(fashion["train_set"], 64, g_ref), 0.001)
    nb.train_epoch(fast, nb.resident_batches(fashion["train"], 64, g_fast), 0.001)
    assert states_close(reference, fast, tol=1e-6)
    # On CPU the two paths run the same kernels on the same numbers: the notebook says "bitwise", so check it.
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), fast.state_dict().values()))


@pytest.mark.parametrize("name", ["FashionNetwork", "FashionNetworkBatchNorm"])
def test_stacked_models_equal_the_same_models_trained_one_by_one(nb, fashion, name):
    # 64 steps in all, at learning rates up to 0.1. Longer runs, or larger rates, agree as well until some ReLU
    # input lands within float32 rounding of zero and flips sign in one path only; after that the two drift apart
    # as runs on two different CPUs would (seen here: baseline, seed 3, lr 0.3, second epoch).
    model_class, epochs = getattr(nb, name), 2
    train = tuple(t[:2048] for t in fashion["train"])
    seeds, rates = [1, 2, 3], [0.001, 0.01, 0.1]
    pairs = [nb.make_model(model_class, s, "cpu") for s in seeds]
    history = nb.fit([m for m, _ in pairs], [g for _, g in pairs], train, fashion["test"], rates, 64, epochs,
                     log=False)
    for k, (seed, lr) in enumerate(zip(seeds, rates)):
        single, g = nb.make_model(model_class, seed, "cpu")
        accuracies = []
        for _ in range(epochs):
            nb.train_epoch(single, nb.resident_batches(train, 64, g), lr)
            accuracies.append(nb.evaluate(lambda xb: single.eval()(xb)[None], fashion["test"])[1].item())
        assert states_close(pairs[k][0], single, tol=1e-5)  # weights, biases, running mean/var, batch counts
        # Same accuracies; a logit tie broken differently by float32 rounding may move at most one test image.
        assert np.abs(history["test_acc"][k] - accuracies).max() <= 1 / len(fashion["test"][1])


def test_stacked_batch_norm_keeps_each_models_own_running_statistics(nb, fashion):
    train = tuple(t[:1024] for t in fashion["train"])
    pairs = [nb.make_model(nb.FashionNetworkBatchNorm, s, "cpu") for s in (1, 2)]
    nb.fit([m for m, _ in pairs], [g for _, g in pairs], train, fashion["test"], [0.01, 0.5], 64, 1, log=False)
    a, b = (m.layers[1] for m, _ in pairs)
    assert not torch.allclose(a.running_mean, b.running_mean)
    assert a.num_batches_tracked.item() == b.num_batches_tracked.item() == 1024 // 64


def test_training_lowers_the_loss_on_a_small_subset(nb, fashion):
    train = tuple(t[:2048] for t in fashion["train"])
    pairs = [nb.make_model(cls, 5, "cpu") for cls in (nb.FashionNetwork, nb.FashionNetworkBatchNorm)]
    for model, g in pairs:
        before = nb.evaluate(lambda xb: model.eval()(xb)[None], train)[0].item()
        history = nb.fit([model], [g], train, train, 0.05, 32, 3, log=False)
        assert history["train_loss"][0, -1] < history["train_loss"][0, 0]
        assert history["test_loss"][0, -1] < 0.8 * before


def test_evaluate_counts_and_loss(nb):
    y = torch.tensor([0, 1, 2, 3, 4])
    X = torch.arange(5.0)[:, None].expand(5, 784)  # each row carries its own index, to look up its logits
    logits = torch.zeros(2, 5, 10)
    logits[0, :, 0] = 5.0                   # model 0 always says class 0: right once
    logits[1, torch.arange(5), y] = 5.0     # model 1 is always right
    logits[1, 4, 9] = 6.0                   # ... except on the last image
    forward = lambda xb: logits[:, xb[:, 0].long()]  # noqa: E731
    expected = F.cross_entropy(logits.transpose(1, 2), y.expand(2, -1), reduction="none").mean(1)
    for chunk in (5, 3, 1):  # the chunking must not change the result
        loss, accuracy = nb.evaluate(forward, (X, y), chunk=chunk)
        assert accuracy.tolist() == [pytest.approx(1 / 5), pytest.approx(4 / 5)]
        assert torch.allclose(loss, expected)


def test_same_seed_gives_identical_metrics_twice_on_cpu(nb, fashion):
    train = tuple(t[:3000] for t in fashion["train"])
    runs = [nb.train_seeds(nb.FashionNetworkBatchNorm, [4, 5], train, fashion["test"], 0.01, 64, 2, log=False)
            for _ in range(2)]
    for metric in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert np.array_equal(runs[0][metric], runs[1][metric])
    other = nb.train_seeds(nb.FashionNetworkBatchNorm, [6, 5], train, fashion["test"], 0.01, 64, 2, log=False)
    assert not np.array_equal(other["test_loss"][0], runs[0]["test_loss"][0])
    assert np.array_equal(other["test_loss"][1], runs[0]["test_loss"][1])  # models in a stack are independent
