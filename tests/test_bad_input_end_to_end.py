"""Bad input, end to end: the notebook itself stops at once, with one message, and writes nothing to results/."""
import json

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from notebook import NOTEBOOK


def run_with(overrides, tmp_path):
    """Execute the notebook with settings appended to its parameters cell, as papermill's -p would inject them."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    results = tmp_path / "results"
    parameters.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in {**overrides, "RESULTS_DIR": str(results)}.items())
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError):
        client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1
    assert not results.exists() or not any(results.iterdir()), "a failed run must not leave files in results/"
    return errors[0]


def test_missing_data_root_stops_with_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be: even with internet, torchvision cannot download here")
    error = run_with({"DATA_ROOT": str(blocker / "data")}, tmp_path)
    assert error.ename == "DataError"
    assert len(error.traceback) == 1, "Jupyter should show the message alone, not a traceback"
    assert "FASHION_MNIST_ROOT" in error.traceback[0] and "FashionMNIST/raw" in error.traceback[0]


@pytest.mark.parametrize("setting, value, word", [("BATCH_SIZE", 0, "BATCH_SIZE"), ("LR", -0.1, "LR"),
                                                  ("EPOCHS", 0, "EPOCHS"), ("DEVICE", "tpu", "Unknown device")])
def test_nonsensical_settings_stop_before_any_work(tmp_path, setting, value, word):
    error = run_with({setting: value}, tmp_path)
    assert error.ename == "ValueError" and word in error.evalue


def test_save_json_is_all_or_nothing(nb, tmp_path):
    with pytest.raises(TypeError):
        nb.save_json({"runs": {1, 2}}, tmp_path, "broken")       # a set is not JSON
    assert list(tmp_path.iterdir()) == []
    path = nb.save_json({"runs": [1, 2]}, tmp_path, "fine")
    assert json.loads(path.read_text()) == {"runs": [1, 2]} and [p.name for p in tmp_path.iterdir()] == ["fine.json"]
