import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook import data_root, load_definitions  # noqa: E402

# nbval re-executes the notebook in a kernel that inherits this environment: its figures and JSON go to a
# temporary folder, so running the tests leaves the committed results/ (and `git status`) untouched.
os.environ["BN_STUDY_RESULTS"] = tempfile.mkdtemp(prefix="bn_study_results_")


@pytest.fixture(scope="session")
def nb():
    """The notebook's definitions, executed once per test session."""
    return load_definitions()


@pytest.fixture(scope="session")
def fashion(nb):
    """The real Fashion-MNIST as CPU tensors, from FASHION_MNIST_ROOT (default: data/ next to the notebook)."""
    train_set = nb.load_fashion_mnist(data_root(), train=True)
    test_set = nb.load_fashion_mnist(data_root(), train=False)
    return {"train_set": train_set, "test_set": test_set,
            "train": nb.to_device_tensors(train_set, "cpu"), "test": nb.to_device_tensors(test_set, "cpu")}
