"""The committed notebook, results/*.json and the README tell the same story: none of them is stale."""
import json
import re

import numpy as np
import pytest

from notebook import REPO, load_notebook

RESULTS = REPO / "results"


def results(name):
    return json.loads((RESULTS / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def saved_tables():
    """Every Markdown table the committed notebook displayed, as lists of cells per row."""
    tables = []
    for cell in load_notebook()["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/markdown", ""))
            if text.startswith("|"):
                tables.append([[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()])
    return tables


@pytest.fixture(scope="module")
def readme():
    """The README with its line breaks folded into spaces, so that a number may wrap anywhere."""
    return re.sub(r"\s+", " ", (REPO / "README.md").read_text(encoding="utf-8"))


def table_with_header(tables, first_cells):
    return next(t for t in tables if t[0][: len(first_cells)] == first_cells)


def verdict_line(row):
    return "| " + " | ".join(row[c] for c in ("claim", "where it comes from", "experiment", "verdict",
                                              "key number", "section")) + " |"


def test_saved_reference_table_matches_results_json(saved_tables):
    runs = results("reference_experiment")["runs"]
    table = table_with_header(saved_tables, ["model", "epoch", "train loss"])
    labels = {"baseline": "baseline", "BatchNorm": "batchnorm"}
    rows = [r for r in table[2:] if r[0] in labels]
    assert len(rows) == 2 * len(runs["baseline"]["test_acc"][0])
    for label, epoch, train_loss, train_acc, test_loss, test_acc, _ in rows:
        run, e = runs[labels[label]], int(epoch) - 1
        assert float(test_acc) == pytest.approx(100 * run["test_acc"][0][e], abs=0.051)
        assert float(train_loss) == pytest.approx(run["train_loss"][0][e], abs=0.0006)


def test_saved_variance_table_matches_results_json(nb, saved_tables):
    runs = results("variance_over_seeds")["runs"]
    table = table_with_header(saved_tables, ["test accuracy (%), mean ± 95 % CI", "epoch 1"])
    for row, name in zip(table[2:], ("baseline", "batchnorm")):
        acc = 100 * np.asarray(runs[name]["test_acc"])
        assert row[1:1 + acc.shape[1]] == [nb.fmt_ci(acc[:, e]) for e in range(acc.shape[1])]


def test_the_notebooks_verdict_table_is_the_summarys(saved_tables):
    verdicts = results("study_summary")["summary"]["verdicts"]
    table = table_with_header(saved_tables, ["claim", "where it comes from"])
    assert [r[0] for r in table[2:]] == [v["claim"] for v in verdicts]
    assert [r[3] for r in table[2:]] == [v["verdict"] for v in verdicts]


def test_readme_opens_with_the_verdict_table_of_the_run(readme):
    verdicts = results("study_summary")["summary"]["verdicts"]
    assert len(verdicts) >= 9
    first_table = readme.index("| claim | where it comes from |")
    assert first_table < readme.index("## Quickstart")
    for row in verdicts:
        assert verdict_line(row) in readme, row["claim"]


def test_readme_band_comes_from_the_results(nb, readme):
    runs = results("variance_over_seeds")["runs"]
    for name in ("baseline", "batchnorm"):
        acc = 100 * np.asarray(runs[name]["test_acc"])
        assert " | ".join(nb.fmt_ci(acc[:, e]) for e in range(acc.shape[1])) in readme, name
    reference = results("reference_experiment")["runs"]
    finals = [f"{100 * reference[n]['test_acc'][0][-1]:.1f} %" for n in ("baseline", "batchnorm")]
    assert f"gives {finals[0]} and {finals[1]}" in readme


def test_readme_speed_table_is_the_benchmark_output(readme):
    speed = results("epoch_speed")
    assert f"{speed['peak_matmul_gflops']:g} GFLOP/s" in readme
    for e in speed["entries"]:
        row = f"| {e['path']} | {e['k']} | {e['order']} | {e['seconds_per_model_epoch']:g} | {e['gflops']:g} | " \
              f"{100 * e['fraction_of_peak']:.0f} % | {e['ratio_vs_dataloader']:g}× |"
        assert row in readme, row


def test_readme_seed_table_is_the_other_seed_runs(readme):
    """The verdicts of the runs with other seeds, as the README shows them, come from results/verdicts_by_seed.json."""
    by_seed = results("verdicts_by_seed")
    committed = results("study_summary")
    assert by_seed[str(committed["config"]["seed"])] == [
        {"claim": v["claim"], "verdict": v["verdict"], "key number": v["key number"]}
        for v in committed["summary"]["verdicts"]]
    assert len(by_seed) >= 4, "the committed seed and three others"
    for i, row in enumerate(by_seed[str(committed["config"]["seed"])]):
        line = f"| {row['claim']} | " + " | ".join(by_seed[s][i]["verdict"] for s in by_seed) + " |"
        assert line in readme, row["claim"]
