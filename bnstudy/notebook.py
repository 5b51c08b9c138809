"""The notebook's own definitions and settings, for the tests and the benchmark: what its cells tagged `definitions`
define (the tutorial's two models, the textbook loop, BatchNorm from scratch) and its `parameters` cell's values,
read from the notebook itself so that no copy of them can drift."""
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


def parameters_cell(nb):
    """The notebook's one cell tagged `parameters` (a cell of a JSON dict or of an nbformat node)."""
    return next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))


def load_parameters(path=NOTEBOOK):
    """The parameters cell executed: every setting at its committed value, by name."""
    settings = {}
    exec("import os\n" + "".join(parameters_cell(load_notebook(path))["source"]), settings)
    return {name: value for name, value in settings.items() if name.isupper()}
