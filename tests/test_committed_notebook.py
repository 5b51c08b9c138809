"""The committed notebook as a reader sees it on GitHub: executed in order, with figures, and nothing broken."""
import json
import re

import pytest

from notebook import NOTEBOOK, load_notebook

MACHINE_PATHS = ("/work/", "/tmp/", "/root/", "/home/", "/Users/", "C:\\\\")


@pytest.fixture(scope="module")
def committed():
    return load_notebook()


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_executed_top_to_bottom_in_order(committed):
    counts = [c["execution_count"] for c in code_cells(committed)]
    assert counts == list(range(1, len(counts) + 1))


def test_no_error_and_no_widget_outputs(committed):
    assert "widgets" not in committed["metadata"]
    for cell in code_cells(committed):
        for output in cell["outputs"]:
            assert output["output_type"] != "error", "".join(cell["source"])[:200]
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})


def test_every_figure_has_an_image_output(committed):
    cells = [(c, "".join(c["source"])) for c in code_cells(committed)]
    figure_cells = [c for c, src in cells
                    if ("plt.show()" in src or "save_figure(fig" in src) and "def save_figure" not in src]
    assert len(figure_cells) >= 4
    for cell in figure_cells:
        assert any("image/png" in o.get("data", {}) for o in cell["outputs"]), "".join(cell["source"])[:200]


def test_small_enough_for_github_and_free_of_machine_paths():
    assert NOTEBOOK.stat().st_size < 2_000_000
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert not [p for p in MACHINE_PATHS if p in text]


def test_one_parameters_cell_holds_the_settings(committed):
    tagged = [c for c in code_cells(committed) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    names = re.findall(r"^([A-Z_]+) = ", "".join(tagged[0]["source"]), flags=re.M)
    assert {"SEED", "BATCH_SIZE", "LR", "EPOCHS", "DATA_ROOT", "DEVICE"} <= set(names)


def test_definition_cells_have_no_side_effects(committed):
    """Cells tagged `definitions` are what the tests import: only imports, constants, functions and classes."""
    for cell in code_cells(committed):
        if "definitions" in cell["metadata"].get("tags", []):
            assert cell["outputs"] == [], "".join(cell["source"])[:200]


def test_saved_progress_is_plain_text_lines(committed):
    """Progress bars leave no carriage-return debris in the saved file: GitHub shows what a terminal would."""
    streams = [o for c in code_cells(committed) for o in c["outputs"] if o["output_type"] == "stream"]
    assert streams and not any("\r" in "".join(o["text"]) for o in streams)
    epoch_lines = [line for o in streams for line in "".join(o["text"]).splitlines() if " epoch " in line]
    assert any(re.match(r"batchnorm ×\d+ epoch 5/5: train loss", line) for line in epoch_lines)


def test_the_verdict_table_opens_the_notebook(committed):
    """Under the title: the verdict table, filled in by the last section of the same run, then the contents."""
    title, table_cell, contents = committed["cells"][:3]
    assert title["cell_type"] == "markdown" and "".join(title["source"]).startswith("# ")
    table = "".join(table_cell["outputs"][0]["data"]["text/markdown"])
    assert table.startswith("| claim | where it comes from | experiment | verdict |")
    assert len(table.splitlines()) >= 2 + 9, "a row for every claim on trial"
    assert "".join(contents["source"]).startswith("**Contents.**")


def test_cells_stay_short(committed):
    long = [("".join(c["source"]).splitlines()[0], len(c["source"])) for c in code_cells(committed)
            if len(c["source"]) > 30]
    assert not long, long
