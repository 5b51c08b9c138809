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


def parameters_cell(nb):
    """The notebook's one cell tagged `parameters` (a cell of a JSON dict or of an nbformat node)."""
    return next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))


def load_parameters(path=NOTEBOOK):
    """The parameters cell executed: every setting at its committed value, by name."""
    settings = {}
    exec("import os\n" + "".join(parameters_cell(load_notebook(path))["source"]), settings)
    return {name: value for name, value in settings.items() if name.isupper()}


def execute_with(overrides, results_dir, stop_at_error=True, timeout=600):
    """Execute the notebook with `overrides` appended to its parameters cell, as papermill's -p injects them, and
    its results written to `results_dir`. The kernel starts beside the notebook, as Jupyter starts it, so that it
    imports bnstudy/. Returns the executed nbformat notebook; an error stays in its cell's outputs, and execution
    stops there (stop_at_error) or goes on with the next cells."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = parameters_cell(nb)
    cell.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in {**overrides, "RESULTS_DIR": str(results_dir)}.items())
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=not stop_at_error,
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    except CellExecutionError:
        pass  # the caller reads the error from the notebook's outputs
    return nb


def errors_of(nb):
    """Every error output of an executed notebook, in cell order."""
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
