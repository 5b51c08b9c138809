"""Fashion-MNIST as the study uses it: the raw files checked, the images resident on the device, the splits.

Pixels are scaled to [0, 1] exactly as torchvision's ToTensor does (uint8 / 255), and not standardised: that is
the reference recipe. `epoch_permutation` draws a DataLoader's shuffled order without a DataLoader, so the engine
sees the same batches as the textbook loop.
"""
import contextlib
import io
import math
import os
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import ToTensor

TRAIN_IMAGES = 60_000   # Fashion-MNIST's training set (the last VAL_SIZE of them validate): one model-epoch
RAW_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(RuntimeError):
    """Data that cannot be found or read. Jupyter shows only this message, not a traceback."""

    def _render_traceback_(self):
        return [f"DataError: {self}"]


def check_idx_file(path):
    """Return the shape an unsigned-byte IDX file declares, after checking the file holds exactly that much."""
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
            raise DataError(f"{path} is not a Fashion-MNIST IDX file (bad header). Delete it and download again.")
        shape = tuple(int.from_bytes(f.read(4), "big") for _ in range(header[3]))
    expected, actual = 4 + 4 * len(shape) + math.prod(shape), os.path.getsize(path)
    if actual != expected:
        raise DataError(f"{path} is truncated or corrupt: its header promises {expected:,} bytes, it has "
                        f"{actual:,}. Delete it and download again, or point FASHION_MNIST_ROOT at a good copy.")
    return shape


def load_fashion_mnist(root, train, download=True):
    """torchvision's FashionMNIST with ToTensor, after checking the raw files; one clear DataError otherwise."""
    raw = Path(root) / "FashionMNIST" / "raw"
    files = [raw / name for pair in RAW_FILES.values() for name in pair]  # torchvision wants all four
    reason = ""
    if download and not all(f.exists() for f in files):
        try:  # torchvision prints each mirror it tries; keep only the outcome
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torchvision.datasets.FashionMNIST(root, train=train, download=True)
        except Exception as error:  # offline, a proxy, a full disk: all end in the same advice
            reason = f" The download failed too ({str(error).splitlines()[0]})."
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise DataError(f"Fashion-MNIST not found: looked for {', '.join(missing)} in {raw}/.{reason} Set "
                        "FASHION_MNIST_ROOT to a folder that holds FashionMNIST/raw/ with the four IDX files.")
    images, labels = (check_idx_file(raw / name) for name in RAW_FILES[train])
    if images[0] != labels[0]:
        raise DataError(f"{RAW_FILES[train][0]} holds {images[0]:,} images but {RAW_FILES[train][1]} holds "
                        f"{labels[0]:,} labels: the files are from different sets. Download them again.")
    return torchvision.datasets.FashionMNIST(root, train=train, download=False, transform=ToTensor())


def to_device_tensors(dataset, device):
    """The whole set as one [N, 784] float tensor scaled exactly as ToTensor scales, and its labels, on device."""
    images = dataset.data.to(torch.float32).div(255).flatten(1)  # ToTensor: uint8 -> float, then / 255
    return images.to(device), dataset.targets.to(device)


def split_data(train, test, val_size, probe_size):
    """The reference experiment's sets, and the tuning sets: the last `val_size` training images are held out.

    "full": all 60,000 training images (the reference recipe); "train": the rest after the validation split;
    "val": the held-out split that chooses every hyper-parameter; "probe": its first `probe_size` images, for cheap
    accuracy curves; "test": reported, never used to choose anything.
    """
    X, y = train
    n = len(X) - val_size
    return {"full": train, "train": (X[:n], y[:n]), "val": (X[n:], y[n:]),
            "probe": (X[n:n + probe_size], y[n:n + probe_size]), "test": test}


def epoch_permutation(n, generator):
    """The order of one full epoch of DataLoader(shuffle=True, generator=generator), drawing exactly what it draws."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # DataLoader first draws a worker base seed
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)  # RandomSampler draws one more permutation, unused, at the epoch's end
    return order


def resident_batches(data, batch_size, generator):
    """The same batches as DataLoader(data, batch_size, shuffle=True, generator=generator), cut from tensors already
    on the device."""
    X, y = data
    for idx in epoch_permutation(len(X), generator).to(X.device).split(batch_size):
        yield X[idx], y[idx]


def first_images(data, n):
    """The splits in `data` with the training split cut to its first n images (a smaller, cheaper training set)."""
    return {**data, "train": tuple(t[:n] for t in data["train"])}


def without(data, split):
    """The splits in `data` but one: tuning never sees "test", reporting runs do not evaluate "val"."""
    return {name: part for name, part in data.items() if name != split}
