import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bnstudy/ beside the notebook, as its kernel finds it
from bnstudy.data import load_fashion_mnist, to_device_tensors  # noqa: E402
from bnstudy.notebook import data_root, load_definitions  # noqa: E402

# nbval re-executes the notebook in a kernel that inherits this environment: its figures and JSON go to a
# temporary folder, so running the tests leaves the committed results/ (and `git status`) untouched.
os.environ["BN_STUDY_RESULTS"] = tempfile.mkdtemp(prefix="bn_study_results_")


@pytest.fixture(scope="session")
def nb():
    """The notebook's own definitions (the tutorial's models, the textbook loop, BatchNorm from scratch), executed once
    per test session; everything else the tests import from the package."""
    return load_definitions()


@pytest.fixture(scope="session")
def fashion():
    """The real Fashion-MNIST as CPU tensors, from FASHION_MNIST_ROOT (default: data/ next to the notebook)."""
    train_set = load_fashion_mnist(data_root(), train=True)
    test_set = load_fashion_mnist(data_root(), train=False)
    return {"train_set": train_set, "test_set": test_set,
            "train": to_device_tensors(train_set, "cpu"), "test": to_device_tensors(test_set, "cpu")}
