"""The committed notebook as a reader sees it on GitHub: executed in order, with figures, and nothing broken."""
import json
import re

import pytest

from bnstudy.notebook import NOTEBOOK, load_notebook

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
                    if "plt.show()" in src or "save_figure(fig" in src]
    assert len(figure_cells) >= 4
    for cell in figure_cells:
        assert any("image/png" in o.get("data", {}) for o in cell["outputs"]), "".join(cell["source"])[:200]


def test_small_enough_for_github_and_free_of_machine_paths():
    assert NOTEBOOK.stat().st_size < 2_000_000
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert not [p for p in MACHINE_PATHS if p in text]


def test_one_parameters_cell_holds_the_settings(committed):
    """One cell tagged `parameters` (test_config checks that it holds every setting check_config knows)."""
    tagged = [c for c in code_cells(committed) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1


def test_definition_cells_have_no_side_effects(committed):
    """Cells tagged `definitions` are what the tests import: only imports, constants, functions and classes."""
    for cell in code_cells(committed):
        if "definitions" in cell["metadata"].get("tags", []):
            assert cell["outputs"] == [], "".join(cell["source"])[:200]


def test_saved_progress_is_plain_text_lines(committed):
    """Progress bars leave no carriage-return debris in the saved file: GitHub shows what a terminal would."""
    streams = [o for c in code_cells(committed) for o in c["outputs"] if o["output_type"] == "stream"]
    assert streams and not any("\r" in "".join(o["text"]) or "%|" in "".join(o["text"]) for o in streams)
    lines = [line for o in streams for line in "".join(o["text"]).splitlines()]
    assert any(re.match(r"BatchNorm ×\d+ epoch 5/5: train loss", line) for line in lines)
    records = [line for line in lines if re.match(r"[\d.]+ · .+: \d+ runs × \d+ epochs? of [\d,]+ images$", line)]
    assert len(records) >= 10, "every pass (a few wide ones: the shared lr grid) leaves the line that says what it trained"


def test_the_answer_opens_the_notebook(committed):
    """Under the title: the answer, the hero figure and the compact verdict table, filled in by the last section of
    the same run; then how a verdict is reached, and the contents."""
    from bnstudy.results import COMPACT_COLUMNS
    title, top, method = committed["cells"][:3]
    assert title["cell_type"] == "markdown" and "".join(title["source"]).startswith("# ")
    answer, hero, table = top["outputs"]
    takeaways = "".join(answer["data"]["text/markdown"]).splitlines()
    assert len(takeaways) >= 5 and all(t.startswith("- *") for t in takeaways)
    assert "image/png" in hero["data"]
    table = "".join(table["data"]["text/markdown"])
    assert table.startswith("| " + " | ".join(COMPACT_COLUMNS) + " |")
    assert len(table.splitlines()) >= 2 + 9, "a row for every claim on trial"
    assert "".join(method["source"]).startswith("**How a verdict is reached**")
    assert "**Contents.**" in "".join(method["source"])


def test_the_first_result_figure_comes_early_and_the_notebook_stays_short(committed):
    cells = committed["cells"]
    first_image = next(i for i, c in enumerate(cells) if i > 1 and c["cell_type"] == "code"
                       and any("image/png" in o.get("data", {}) for o in c["outputs"]))
    assert first_image < 15
    assert len(cells) <= 110


def test_every_link_inside_the_notebook_has_its_anchor(committed):
    """GitHub's renderer resolves explicit <a id> anchors; every #link of the notebook and its outputs needs one."""
    text = json.dumps(committed)
    anchors = set(re.findall(r'<a id=\\"([\w-]+)\\"', text))
    links = set(re.findall(r"\]\(#([\w-]+)\)", text))
    assert links and links <= anchors, links - anchors


def test_the_machinery_is_imported_not_patched_in(committed):
    """The engine and the models live in bnstudy/; no cell grows a class from outside it."""
    sources = "".join("".join(c["source"]) for c in code_cells(committed))
    assert "add_to_class" not in sources and "from bnstudy" in sources


def test_cells_stay_short(committed):
    long = [("".join(c["source"]).splitlines()[0], len(c["source"])) for c in code_cells(committed)
            if len(c["source"]) > 30]
    assert not long, long
