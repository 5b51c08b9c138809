"""Progress: a text bar while a pass trains, nothing of it in the saved notebook; every import is a requirement."""
import ast
import re
import sys

import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from bnstudy.notebook import NOTEBOOK, REPO, load_notebook

TINY_PASS = """
import torch
from bnstudy.engine import train_runs
from bnstudy.models import Arch, Run
g = torch.Generator().manual_seed(0)
data = {"train": (torch.rand(6400, 784, generator=g), torch.randint(0, 10, (6400,), generator=g))}
trained = train_runs([Run(s, 0.1, arch=Arch(norm="batchnorm")) for s in (1, 2)], data, 30, progress="a tiny pass")
print("trained", trained.history["train_loss"].shape)
"""


def stream_texts(cell):
    return ["".join(o["text"]) for o in cell.outputs if o["output_type"] == "stream"]


def test_a_bar_updates_while_a_pass_trains_and_leaves_only_its_record_line(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(TINY_PASS)])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    live = stream_texts(nb.cells[0])   # the stream messages as they came in, one output each
    updates = [t for t in live if re.search(r"a tiny pass: +\d+% \|", t)]
    assert len(updates) >= 3, live[:5]  # the bar moved while the pass ran, on the text stream: no widget
    assert all(o["output_type"] == "stream" for o in nb.cells[0].outputs)
    saved, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})   # what the README's run command keeps
    text = "".join(stream_texts(saved.cells[0]))
    assert text == "a tiny pass: 2 runs × 30 epochs of 6,400 images\ntrained (2, 30)\n", repr(text)


def imported_modules(source):
    """Top-level modules that a piece of Python source imports (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


DISTRIBUTION = {"PIL": "pillow", "IPython": "ipython"}   # import name -> the package that provides it
PROVIDED_BY = {"ipython": "jupyter", "pillow": "matplotlib"}  # installed by another requirement
TOOLS = {"papermill", "nbconvert"}                      # run from the command line (README), not imported


def test_requirements_install_every_package_that_is_imported():
    sources = [p.read_text() for folder in ("bnstudy", "tests", "benchmarks") for p in (REPO / folder).glob("*.py")]
    sources += ["".join(c["source"]) for c in load_notebook(NOTEBOOK)["cells"] if c["cell_type"] == "code"]
    imported = set().union(*(imported_modules(s) for s in sources))
    local = {"bnstudy", "study_notebook", "benchmarks"} | {p.stem for p in (REPO / "tests").glob("*.py")}
    third_party = {DISTRIBUTION.get(m, m).lower() for m in imported - local - set(sys.stdlib_module_names)}
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    required = {re.split(r"[<>=!~ \[]", line)[0].lower() for line in lines if line}
    assert third_party - set(PROVIDED_BY) <= required, third_party - set(PROVIDED_BY) - required
    assert TOOLS <= required and {"tqdm", "papermill", "nbconvert", "nbclient"} <= required
    assert all(PROVIDED_BY[p] in required for p in third_party & set(PROVIDED_BY))
