"""Load the notebook's own definitions (the code cells tagged `definitions`), so tests never copy them."""
import json
import os
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "batch_normalization_study.ipynb"


def data_root():
    """Where the notebook looks for Fashion-MNIST: FASHION_MNIST_ROOT, else data/ next to it."""
    return os.environ.get("FASHION_MNIST_ROOT", str(REPO / "data"))


def load_notebook(path=NOTEBOOK):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_definitions(path=NOTEBOOK, tag="definitions"):
    """Execute the tagged cells, in notebook order, into a fresh module and return it."""
    module = types.ModuleType("batch_normalization_study")
    module.__file__ = str(path)
    for i, cell in enumerate(load_notebook(path)["cells"]):
        if cell["cell_type"] == "code" and tag in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            exec(compile(source, f"{Path(path).name}, cell {i}", "exec"), module.__dict__)
    return module
