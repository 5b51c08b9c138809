"""Bad input, end to end: the notebook itself stops at once, with one message, and writes nothing to results/."""
import json

import pytest

from bnstudy.results import save_json
from study_notebook import errors_of, execute_with


def run_with(overrides, tmp_path):
    """The notebook run with bad settings: exactly one error, and no file left in its results folder."""
    results = tmp_path / "results"
    errors = errors_of(execute_with(overrides, results, timeout=120))
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


@pytest.mark.parametrize("setting, value, word", [("LR", -0.1, "LR"), ("DEVICE", "tpu", "DEVICE must be")])
def test_nonsensical_settings_stop_before_any_work(tmp_path, setting, value, word):
    error = run_with({setting: value}, tmp_path)
    assert error.ename == "ValueError" and word in error.evalue


def test_save_json_is_all_or_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_json({"runs": {1, 2}}, tmp_path, "broken")       # a set is not JSON
    assert list(tmp_path.iterdir()) == []
    path = save_json({"runs": [1, 2]}, tmp_path, "fine")
    assert json.loads(path.read_text()) == {"runs": [1, 2]} and [p.name for p in tmp_path.iterdir()] == ["fine.json"]
