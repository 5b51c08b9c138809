"""Run the notebook with other settings, as papermill would, and read its errors (the loaders are in the package)."""
from bnstudy.notebook import NOTEBOOK, parameters_cell


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
