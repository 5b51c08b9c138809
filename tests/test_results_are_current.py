"""The committed notebook, results/*.json and the README tell the same story: none of them is stale."""
import json
import re

import numpy as np
import pytest

from bnstudy.notebook import REPO, load_notebook
from bnstudy.claims import registry_blob
from bnstudy.protocol import BLOCK, DEVELOPMENT_SEED
from bnstudy.results import VERDICT_COLUMNS, compact_row, redecide
from bnstudy.stats import OUTCOMES, fmt_ci, robustness

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
    return "| " + " | ".join(row[c] for c in VERDICT_COLUMNS) + " |"


def test_saved_reference_table_matches_results_json(saved_tables):
    runs = results("reference_experiment")["runs"]
    table = next(t for t in saved_tables if t[0][0].startswith("one run: seed") and t[0][1:3] == ["epoch", "train loss"])
    labels = {"baseline": "baseline", "BatchNorm": "batchnorm"}
    rows = [r for r in table[2:] if r[0] in labels]
    assert len(rows) == 2 * len(runs["baseline"]["test_acc"][0])
    for label, epoch, train_loss, train_acc, test_loss, test_acc, _ in rows:
        run, e = runs[labels[label]], int(epoch) - 1
        assert float(test_acc) == pytest.approx(100 * run["test_acc"][0][e], abs=0.051)
        assert float(train_loss) == pytest.approx(run["train_loss"][0][e], abs=0.0006)


def test_saved_variance_table_matches_results_json(saved_tables):
    runs = results("variance_over_seeds")["runs"]
    table = table_with_header(saved_tables, ["test accuracy (%), mean ± 95 % CI", "epoch 1"])
    for row, name in zip(table[2:], ("baseline", "batchnorm")):
        acc = 100 * np.asarray(runs[name]["test_acc"])
        assert row[1:1 + acc.shape[1]] == [fmt_ci(acc[:, e]) for e in range(acc.shape[1])]


def test_the_notebooks_verdict_table_is_the_summarys(saved_tables):
    verdicts = results("study_summary")["summary"]["verdicts"]
    table = table_with_header(saved_tables, ["claim", "where it comes from"])
    assert [r[0] for r in table[2:]] == [v["claim"] for v in verdicts]
    assert [r[VERDICT_COLUMNS.index("verdict")] for r in table[2:]] == [v["verdict"] for v in verdicts]


def test_every_verdict_is_the_decision_rules_on_its_saved_values():
    """Each row's outcome, and each of its sensitivity rows', is what `decide` says about its own saved values and
    declared contrast; robust or depends on follows from them; every primary has at least the first reporting seeds;
    and the registry the run used is the committed one."""
    committed = results("study_summary")
    summary, first = committed["summary"], committed["config"]["first_seeds"]
    assert summary["registry_blob"] == registry_blob(), "the committed run used another registry"
    for row in summary["verdicts"]:
        decision = redecide(row)
        assert decision.outcome == row["outcome"] and row["outcome"] in OUTCOMES, row["claim"]
        assert row["verdict"].startswith(row["outcome"]) and decision.n == row["seeds"] >= first, row["claim"]
        assert row["ci95"] == [decision.low, decision.high]
        sensitivity = {s["condition"]: redecide(s) for s in row["sensitivity"]}
        assert [d.outcome for d in sensitivity.values()] == [s["outcome"] for s in row["sensitivity"]], row["claim"]
        assert robustness(decision, sensitivity).text() == row["reads"], row["claim"]


def test_tuning_seeds_never_report_and_every_seed_lies_in_the_runs_own_block():
    committed = results("study_summary")
    seeds, block = committed["summary"]["seeds"], committed["config"]["seed"] * BLOCK
    reporting, tuning = set(seeds["reporting_seeds"]), set(seeds["tuning_seeds"])
    assert tuning and reporting and not tuning & reporting
    assert all(block <= s < block + BLOCK for s in reporting | tuning)


def compact_line(row):
    return "| " + " | ".join(compact_row(row, "batch_normalization_study.ipynb#")) + " |"


def test_readme_answers_first_from_the_run(readme):
    """Before the Quickstart: at most 600 words of prose, the hero figure, the run's takeaways and its compact table."""
    summary = results("study_summary")["summary"]
    first_screen = readme[: readme.index("## Quickstart")]
    for row in summary["verdicts"]:
        assert compact_line(row) in first_screen, row["claim"]
    prose = first_screen
    for row in summary["verdicts"]:   # the table's rows are read, not counted as prose
        prose = prose.replace(compact_line(row), " ")
    words = [w for w in re.split(r"[\s|]+", re.sub(r"\]\([^)]*\)", "]", prose))  # link targets are no words
             if re.search(r"[A-Za-z0-9]", w)]                                   # nor are ±, × and |
    assert len(words) <= 600, len(words)
    assert "![" in first_screen and "results/hero.png" in first_screen
    assert len(summary["takeaways"]) >= 5
    for takeaway in summary["takeaways"]:
        assert takeaway in first_screen, takeaway
    assert len(summary["verdicts"]) >= 9


def test_readme_full_verdict_table_is_the_runs(readme):
    for row in results("study_summary")["summary"]["verdicts"]:
        assert verdict_line(row) in readme, row["claim"]


def test_readme_band_comes_from_the_results(readme):
    runs = results("variance_over_seeds")["runs"]
    for name in ("baseline", "batchnorm"):
        acc = 100 * np.asarray(runs[name]["test_acc"])
        assert " | ".join(fmt_ci(acc[:, e]) for e in range(acc.shape[1])) in readme, name


def speed_row(e):
    return (f"| {e['path']} | {e['k']} | {e['order']} | {e['seconds_per_model_epoch']:g} | {e['gflops']:g} | "
            f"{100 * e['fraction_of_peak']:.0f} % | "
            + (f"{100 * e['roofline_fraction']:.0f} % |" if "roofline_fraction" in e else "– |")
            + f" {e['ratio_vs_dataloader']:g}× |")


@pytest.fixture(scope="module")
def engine_doc():
    return re.sub(r"\s+", " ", (REPO / "docs" / "engine.md").read_text(encoding="utf-8"))


def test_the_engine_doc_speed_table_is_the_benchmark_output(engine_doc):
    speed = results("epoch_speed")
    assert f"{speed['peak_matmul_gflops']:g} GFLOP/s" in engine_doc
    assert f"{speed['copy_bandwidth_gb_per_s']:g} GB/s" in engine_doc
    assert f"from {min(speed['peak_matmul_gflops_each_time']):g} to {speed['peak_matmul_gflops']:g}" in engine_doc
    for e in speed["entries"]:
        assert speed_row(e) in engine_doc, speed_row(e)
    paths = {e["path"] for e in speed["entries"]}
    assert {"dataloader", "resident", "stacked", "torch.func", "first layer"} <= paths
    assert {(e["k"], e["order"]) for e in speed["entries"] if e["path"] == "torch.func"} >= {
        (k, o) for k in (32, 64) for o in ("shared", "own")}
    notebook = speed["notebook"]
    summary = results("study_summary")["summary"]
    assert notebook["model_epochs_trained"] == summary["model_epochs_trained"], "benchmark and notebook of one run"
    assert (f"trained {notebook['model_epochs_trained']:,.0f} model-epochs in {notebook['wall_seconds']:.0f} s"
            in engine_doc)
    assert f"{100 * notebook['efficiency']:.0f} % of what the matmul peak alone would allow" in engine_doc
    if "previous_engine_wall_seconds" in notebook:
        assert f"the previous engine took {notebook['previous_engine_wall_seconds']:.0f} s" in engine_doc
    assert f"largest difference in the committed run: {summary['engine_check_max_difference']:.1e})" in engine_doc
    assert f"about {summary['model_epochs_trained']:,.0f} model-epochs" in engine_doc


def test_the_readme_says_what_the_committed_run_took(readme):
    speed, summary = results("epoch_speed"), results("study_summary")["summary"]
    assert f"committed run took {speed['notebook']['wall_seconds']:.0f} s" in readme
    assert f"about {summary['model_epochs_trained']:,.0f} model-epochs" in readme
    assert readme.count("docs/engine.md") >= 1 and "## Speed" not in readme, "the engine's details live in docs/"
    seeds = ", ".join(results("verdicts_by_seed"))
    assert f"run with `SEED` = {seeds}: every cell" in readme


def test_readme_seed_table_is_the_other_seed_runs(readme):
    """The verdicts of the runs at other SEEDs, as the README shows them, come from results/verdicts_by_seed.json;
    each SEED's verdicts are re-decided from its own summary; no two SEEDs share a seed, and none touches the
    development block."""
    by_seed = results("verdicts_by_seed")
    committed = results("study_summary")
    seed = str(committed["config"]["seed"])
    assert list(by_seed)[0] == seed and len(by_seed) >= 5, "the committed seed first, and four others"
    assert by_seed[seed]["verdicts"] == [
        {"claim": v["claim"], "verdict": v["outcome"], "estimate": v["estimate [95 % CI]"], "reads": v["reads"],
         "replication_probability": v["replication_probability"]} for v in committed["summary"]["verdicts"]]
    development = set(range(DEVELOPMENT_SEED * BLOCK, (DEVELOPMENT_SEED + 1) * BLOCK))
    used = {}
    for s, record in by_seed.items():
        run = results(f"by_seed/{s}")
        assert run["config"]["seed"] == int(s) and run["summary"]["registry_blob"] == registry_blob(), s
        assert [redecide(v).outcome for v in run["summary"]["verdicts"]] == [v["verdict"] for v in record["verdicts"]]
        seeds = set(record["reporting_seeds"]) | set(record["tuning_seeds"])
        assert seeds == set(run["summary"]["seeds"]["reporting_seeds"]) | set(run["summary"]["seeds"]["tuning_seeds"])
        assert not seeds & development, s
        for other, theirs in used.items():
            assert not seeds & theirs, (s, other)
        used[s] = seeds
    rows = by_seed[seed]["verdicts"]
    for i, row in enumerate(rows):
        line = f"| {row['claim']} | " + " | ".join(by_seed[s]["verdicts"][i]["verdict"] for s in by_seed)
        assert line in readme, row["claim"]
    agree = sum(len({by_seed[s]["verdicts"][i]["verdict"] for s in by_seed}) == 1 for i in range(len(rows)))
    assert f"the same verdict on {agree} of {len(rows)} rows" in readme
