"""The models (the notebook's and the package's) and data loading."""
import numpy as np
import pytest
import torch
from torch import nn

import bnstudy.data
from bnstudy.data import DataError, load_fashion_mnist, split_data
from bnstudy.models import MLP, Arch, count_parameters, make_model, max_state_difference


def layer_types(model):
    return [type(layer) for layer in model.layers]


@pytest.mark.parametrize("name", ["FashionNetwork", "FashionNetworkBatchNorm"])
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (5, 784)])
def test_output_shape(nb, name, shape):
    model = getattr(nb, name)()
    assert model(torch.rand(shape)).shape == (5, 10)


def test_batchnorm_sits_after_each_hidden_linear_before_its_relu(nb):
    assert layer_types(nb.FashionNetwork()) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    bn = nb.FashionNetworkBatchNorm()
    assert layer_types(bn) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert [bn.layers[i].num_features for i in (1, 4)] == [bn.layers[i].out_features for i in (0, 3)]


def test_parameter_counts(nb):
    assert count_parameters(nb.FashionNetwork()) == 52_650
    assert count_parameters(nb.FashionNetworkBatchNorm()) == 52_842


@pytest.mark.parametrize("norm, name", [("none", "FashionNetwork"), ("batchnorm", "FashionNetworkBatchNorm")])
def test_the_packages_mlp_is_the_notebooks_tutorial_model(nb, norm, name):
    """bnstudy's MLP and the tutorial's model as the notebook writes it out: the same function from the same seed."""
    ours, _ = make_model(lambda: MLP(Arch(norm=norm)), 5, "cpu")
    tutorial, _ = make_model(getattr(nb, name), 5, "cpu")
    assert max_state_difference(ours, tutorial) == 0
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    for training in (True, False):
        assert torch.equal(ours.train(training)(x), tutorial.train(training)(x))


def test_models_hold_no_loss_or_optimizer(nb):
    for model in (nb.FashionNetwork(), nb.FashionNetworkBatchNorm()):
        assert not any(isinstance(m, nn.modules.loss._Loss) for m in model.modules())
        assert not any(isinstance(v, torch.optim.Optimizer) for v in vars(model).values())


def test_same_seed_same_initial_weights_and_linears_shared_between_models(nb):
    a, _ = make_model(nb.FashionNetworkBatchNorm, 7, "cpu")
    b, _ = make_model(nb.FashionNetworkBatchNorm, 7, "cpu")
    c, _ = make_model(nb.FashionNetwork, 7, "cpu")
    d, _ = make_model(nb.FashionNetwork, 8, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    linears = lambda m: [l.weight for l in m.layers if isinstance(l, nn.Linear)]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(linears(a), linears(c)))
    assert not torch.equal(linears(c)[0], linears(d)[0])


def test_data_scaled_like_totensor(fashion):
    X, y = fashion["train"]
    assert X.shape == (60_000, 784) and y.shape == (60_000,) and X.dtype == torch.float32
    for i in (0, 123, 59_999):
        image, label = fashion["train_set"][i]  # the DataLoader path: PIL image through ToTensor
        assert torch.equal(image.flatten(), X[i]) and label == y[i]
    assert torch.bincount(y).tolist() == [6000] * 10


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def tiny_root(tmp_path):
    """A data root holding valid five-image training and three-image test sets."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.arange(n * 28 * 28).reshape(n, 28, 28) % 256)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n))
    return tmp_path


def test_loads_a_valid_idx_set(tiny_root):
    dataset = load_fashion_mnist(tiny_root, train=True, download=False)
    assert len(dataset) == 5 and dataset.targets.tolist() == [0, 1, 2, 3, 4]
    assert len(load_fashion_mnist(tiny_root, train=False, download=False)) == 3


def test_a_missing_test_file_is_named(tiny_root):
    (tiny_root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="looked for t10k-labels-idx1-ubyte in"):
        load_fashion_mnist(tiny_root, train=True, download=False)


@pytest.mark.parametrize("root_kind", ["missing", "empty"])
def test_missing_data_says_where_it_looked_and_what_to_set(tmp_path, root_kind, monkeypatch):
    root = tmp_path / "nowhere" if root_kind == "missing" else tmp_path
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")
    monkeypatch.setattr(bnstudy.data.torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError) as info:
        load_fashion_mnist(root, train=True)
    message = str(info.value)
    assert str(root / "FashionMNIST" / "raw") in message and "FASHION_MNIST_ROOT" in message
    assert "download failed" in message
    assert info.value._render_traceback_() == [f"DataError: {message}"]  # Jupyter shows this line, no traceback


def test_truncated_images_file(tiny_root):
    images = tiny_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_fashion_mnist(tiny_root, train=True, download=False)


def test_bad_header(tiny_root):
    labels = tiny_root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="bad header"):
        load_fashion_mnist(tiny_root, train=True, download=False)


def test_images_and_labels_of_different_length(tiny_root):
    write_idx(tiny_root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte", [0, 1, 2])
    with pytest.raises(DataError, match="5 images but .* 3 labels"):
        load_fashion_mnist(tiny_root, train=True, download=False)


def test_validation_split_is_held_out_from_training(fashion):
    splits = split_data(fashion["train"], fashion["test"], val_size=10_000, probe_size=1_000)
    assert len(splits["train"][0]) == 50_000 and len(splits["val"][0]) == 10_000 and len(splits["full"][0]) == 60_000
    assert torch.equal(torch.cat([splits["train"][0], splits["val"][0]]), fashion["train"][0])  # disjoint, complete
    assert torch.equal(splits["probe"][0], splits["val"][0][:1000])
    assert splits["test"] is fashion["test"]
    assert torch.bincount(splits["val"][1]).min() > 900  # every class is in the validation split
