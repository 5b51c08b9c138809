"""The committed notebook, results/*.json and the README tell the same story: none of them is stale."""
import json
import re

import numpy as np
import pytest

from notebook import REPO, load_notebook

RESULTS = REPO / "results"


def results(name):
    return json.loads((RESULTS / f"{name}.json").read_text())


def mean_std(values):
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


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


def test_saved_variance_table_matches_results_json(saved_tables):
    runs = results("variance_over_seeds")["runs"]
    table = table_with_header(saved_tables, ["model", "epoch 1"])
    for row, name in zip(table[2:], ("baseline", "batchnorm")):
        acc = np.asarray(runs[name]["test_acc"])
        assert row[1:1 + acc.shape[1]] == [mean_std(acc[:, e]) for e in range(acc.shape[1])]


def test_readme_numbers_come_from_the_results(readme):
    variance = results("variance_over_seeds")["runs"]
    for name in ("baseline", "batchnorm"):
        acc = np.asarray(variance[name]["test_acc"])
        assert " | ".join(mean_std(acc[:, e]) for e in range(acc.shape[1])) in readme, name
    sweep = results("learning_rate_sweep")
    for name, model_text in (("baseline", "the baseline reaches"), ("batchnorm", "against BatchNorm's")):
        final = 100 * np.asarray(sweep["runs"][name]["test_acc"])[..., -1]      # [rates, seeds]
        best = int(np.argmax(final.mean(1)))
        expected = f"{model_text} **{final[best].mean():.1f} ± {final[best].std(ddof=1):.1f} %** " \
                   f"(lr {sweep['config']['learning_rates'][best]})"
        assert expected in readme
    placement = results("placement_and_alternatives")["runs"]
    for name in ("LayerNorm before ReLU", "BatchNorm after ReLU"):
        assert f"**{mean_std(np.asarray(placement[name]['test_acc'])[:, -1])} %**" in readme
    reference = results("reference_experiment")["runs"]
    finals = [f"{100 * reference[n]['test_acc'][0][-1]:.1f} %" for n in ("baseline", "batchnorm")]
    assert f"gives {finals[0]} and {finals[1]}" in readme


def test_readme_speed_table_is_the_benchmark_output(readme):
    speed = json.loads((RESULTS / "epoch_speed.json").read_text())
    seconds = speed["seconds_per_epoch"]
    row = readme.split("| CPU, 2 cores", 1)[1].split(" | GPU |", 1)[0]
    for value in (seconds["a_dataloader"], seconds["b_resident"], seconds["c_stacked_k_models"],
                  seconds["compute_floor_batch_4096"], speed["ratio_b_over_a"], speed["ratio_c_over_a"],
                  speed["ratio_floor_over_a"]):
        assert f"{value:g}" in row, value


def test_readme_findings_come_from_the_study_summary(readme):
    summary = results("study_summary")["summary"]
    advantage = summary["batch_advantage_points"]["fixed"]
    assert f"from {advantage['64']:+.1f} points at batch 64 to {advantage['8']:+.1f} at batch 8" in readme
    pitfall = summary["eval_pitfall_test_acc"]
    assert (f"scores {100 * pitfall['random order']['1']:.0f} % on single images and "
            f"{100 * pitfall['sorted by class']['1000']:.0f} % on class-sorted batches of 1,000, against "
            f"{100 * pitfall['eval mode']:.1f} % in eval mode") in readme
    drift = summary["median_drift"]
    assert f"(median drift {drift['batchnorm']:.2f} against {drift['baseline']:.1f} starting spreads)" in readme
    smooth = summary["smoothness_medians"]
    assert (f"(effective β-smoothness {smooth['batchnorm']['beta_smoothness']:.1f} against "
            f"{smooth['baseline']['beta_smoothness']:.1f})") in readme
